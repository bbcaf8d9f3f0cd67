"""The key detectors file remembered segments under: secret in every configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from detectors.segment_memory import SegmentMemory
from firewall.core import text_keys


def _probe(env_value: str | None, *flags: str) -> tuple[bool, int, int]:
    """In a fresh interpreter: whether the string hash is trusted, and one text's key twice."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    if env_value is not None:
        env["PYTHONHASHSEED"] = env_value
    code = (
        "from firewall.core.text_keys import SECRET_STRING_HASH, text_key\n"
        "t = 'the system prompt'\n"
        "print(SECRET_STRING_HASH, text_key(t), hash(t))\n"
    )
    out = subprocess.run(
        [sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.parametrize("value", [None, "", "random"])
def test_a_random_interpreter_key_is_used_as_it_is(value: str | None) -> None:
    secret, key, string_hash = _probe(value)
    assert secret
    assert key == string_hash


@pytest.mark.parametrize("value", ["0", "123"])
def test_a_fixed_hash_seed_is_not_trusted(value: str) -> None:
    """Anyone who reads the pod's environment could compute collisions with that seed."""
    secret, key, string_hash = _probe(value)
    assert not secret
    assert key != string_hash
    # ... and the fallback is keyed per process: two processes disagree on the same text.
    assert _probe(value)[1] != key


def test_an_ignored_environment_leaves_the_key_random() -> None:
    assert _probe("123", "-E")[0]


def test_segment_memory_files_results_by_the_text_key() -> None:
    memory: SegmentMemory[int] = SegmentMemory(limit=2)
    text = "".join(["a cached ", "segment"])  # built at run time: its own str object
    memory.put(memory.digest(text), 7)
    assert memory.get(memory.digest("a cached segment")) == 7
    assert memory.digest(text) == text_keys.text_key(text)
    assert memory.get(memory.digest("a cached segment!")) is None
    memory.put(1, 1)
    memory.put(2, 2)  # full: cleared before this one went in
    assert len(memory) == 1
