"""Run the atheris fuzz targets for a bounded number of iterations (CI fuzzing).

Each target runs in its own process (libFuzzer exits the interpreter when it
stops). The iteration count is small enough for the default suite; run the
targets directly for longer campaigns. Where atheris has no wheel (it needs
Linux x86_64 here) the hypothesis suite in ``tests/reliability`` is the
fuzzing that runs.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HERE = Path(__file__).resolve().parent
RUNS = 20000
#: Growth allowed over the starting footprint before libFuzzer calls it a leak (MB).
RSS_GROWTH_MB = 2048


def _rss_limit_mb() -> int:
    """libFuzzer's RSS limit for the child: its start plus RSS_GROWTH_MB.

    libFuzzer reads the peak RSS from getrusage, and on Linux a child created by
    fork + exec inherits the parent's peak: after the model tests the pytest process
    holds ~3 GB, so a fixed 2 GB limit (libFuzzer's default) fails at the first run.
    """
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KB on Linux
    return int(inherited_mb) + RSS_GROWTH_MB


@pytest.mark.parametrize("target", ["fuzz_request_parser.py", "fuzz_sse_parser.py"])
def test_fuzz_target_runs_clean(target: str, tmp_path: Path):
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / target),
            f"-runs={RUNS}",
            "-seed=1",
            f"-rss_limit_mb={_rss_limit_mb()}",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE.parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {RUNS} runs" in done.stderr
