"""Micro-benchmark for the insecure_code detector (not a test; no timing asserts).

Run from the repository root:

    .venv/bin/python -m loadtests.bench.bench_insecure_code

It prints, per case, the detector's cost per call (median and p95 of single calls, best
effort on a shared machine): a prose-only answer (the fast path), a 60-line Python and a
60-line JavaScript answer, every benchmark answer of the eval set, a 2,000-line block
(the worst case the size caps allow), and a stream: a 60-line answer rescanned every 64
new characters as the proxy does, incrementally (the detector's cache) and from scratch
(a fresh request id every scan, i.e. what a detector without incremental state costs).
All texts are written here or come from firewall/evaluation/data/code_answers.jsonl.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from detectors.insecure_code.detector import InsecureCodeDetector
from firewall.core.types import Phase, Sample, Segment
from firewall.evaluation.code_eval import load_code_answers

_PROSE = (
    "To speed up the build, cache the dependencies between runs and split the test suite "
    "into shards that run in parallel. Keep the cache key tied to the lock file so that a "
    "dependency change invalidates it, and measure before and after so you know it helped. "
) * 6

_PY60 = """Here is the service:

```python
import os
import sqlite3
from flask import Flask, request, jsonify, abort

app = Flask(__name__)
DB = os.environ.get("DB", "/var/app/data.db")


def get_db():
    conn = sqlite3.connect(DB)
    conn.row_factory = sqlite3.Row
    return conn


@app.route("/users/<int:user_id>")
def get_user(user_id):
    conn = get_db()
    row = conn.execute("SELECT id, name, email FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        abort(404)
    return jsonify(dict(row))


@app.route("/users", methods=["POST"])
def create_user():
    data = request.get_json()
    name = data.get("name", "").strip()
    email = data.get("email", "").strip()
    if not name or not email:
        abort(400)
    conn = get_db()
    cur = conn.execute("INSERT INTO users (name, email) VALUES (?, ?)", (name, email))
    conn.commit()
    return jsonify({"id": cur.lastrowid}), 201


@app.route("/search")
def search():
    term = request.args.get("q", "")
    conn = get_db()
    rows = conn.execute(f"SELECT id, name FROM users WHERE name LIKE '%{term}%'").fetchall()
    return jsonify([dict(r) for r in rows])


@app.route("/report")
def report():
    kind = request.args.get("kind", "daily")
    return os.popen("generate-report --kind " + kind).read()


@app.route("/health")
def health():
    return "ok"


if __name__ == "__main__":
    app.run(port=5000)
```

Run it with `python app.py`.
"""

_JS60 = """A small Express API:

```js
"use strict";
const express = require("express");
const { Pool } = require("pg");
const { execFile } = require("child_process");

const app = express();
const pool = new Pool();
app.use(express.json());

async function q(text, params) {
  const client = await pool.connect();
  try {
    return await client.query(text, params);
  } finally {
    client.release();
  }
}

app.get("/api/items", async (req, res, next) => {
  try {
    const { rows } = await q("SELECT id, title FROM items WHERE owner = $1", [req.user.id]);
    res.json(rows);
  } catch (err) {
    next(err);
  }
});

app.post("/api/items", async (req, res, next) => {
  try {
    const { title } = req.body;
    if (!title) return res.status(400).json({ error: "title required" });
    const sql = "INSERT INTO items (owner, title) VALUES ($1, $2) RETURNING id";
    const { rows } = await q(sql, [req.user.id, title]);
    res.status(201).json(rows[0]);
  } catch (err) {
    next(err);
  }
});

app.get("/api/items/export", (req, res, next) => {
  const format = req.query.format === "json" ? "json" : "csv";
  execFile("export-items", ["--format", format], (err, stdout) => {
    if (err) return next(err);
    res.type(format).send(stdout);
  });
});

app.get("/search", (req, res) => {
  res.render("search", { q: req.query.q });
});

app.use((err, req, res, next) => {
  console.error(err);
  res.status(500).json({ error: "internal error" });
});

app.listen(3000);
```
"""


def _sample(text: str, rid: str = "bench", source: str = "/text") -> Sample:
    return Sample(rid, Phase.OUTPUT, "bench", (Segment("assistant", text, source),))


def _times(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    det = InsecureCodeDetector()
    det.score_sample(_sample("```python\nx = 1\n```"))  # load rules and grammars once
    print(f"{'case':38s} {'p50 ms':>9s} {'p95 ms':>9s}  notes")
    huge = (
        "```python\n" + "\n".join(f"x{i} = compute({i}) + offset" for i in range(2000)) + "\n```\n"
    )
    cases = {
        "prose_only_1KB": (_PROSE, 5000),
        "python_60_lines": (_PY60, 300),
        "javascript_60_lines": (_JS60, 300),
        "python_2000_lines": (huge, 10),
    }
    for name, (text, n) in cases.items():
        finding = det.score_sample(_sample(text))
        ts = _times(lambda t=text: det.score_sample(_sample(t)), n)
        lines = text.count("\n") + 1
        print(
            f"{name:38s} {statistics.median(ts):9.3f} {_p(ts, 95):9.3f}  lines={lines} "
            f"score={finding.score:.2f} reasons={','.join(finding.reasons) or '-'}"
        )
    answers = load_code_answers()
    per_answer: list[float] = []
    for _ in range(3):
        for a in answers:
            per_answer.extend(_times(lambda t=a.text: det.score_sample(_sample(t)), 1))
    print(
        f"{'eval set, every answer (x3)':38s} {statistics.median(per_answer):9.3f}"
        f" {_p(per_answer, 95):9.3f}"
        f"  answers={len(answers)}"
    )
    for label, incremental in (
        ("stream 60 lines, incremental", True),
        ("stream 60 lines, from scratch", False),
    ):
        total = []
        for rep in range(5):
            t0 = time.perf_counter()
            for i, n in enumerate(range(64, len(_PY60) + 64, 64)):
                rid = f"s{rep}" if incremental else f"s{rep}-{i}"
                det.score_sample(
                    _sample(_PY60[: min(n, len(_PY60))], rid=rid, source="/channels/0")
                )
                det.stream_safe_prefix(_PY60[: min(n, len(_PY60))])
            total.append((time.perf_counter() - t0) * 1000)
        scans = len(range(64, len(_PY60) + 64, 64))
        print(f"{label:38s} {statistics.median(total):9.3f} {'':9s}  whole stream, {scans} scans")


if __name__ == "__main__":
    main()
