"""Tests for detectors.insecure_code.detector and its helpers in detectors/insecure_code/.

Every rule's own safe and unsafe examples (from the YAML packs) run here, inside a fenced
block as a model would write them. The streaming tests replay whole answers from
tests/detectors/code_cases/ in growing prefixes, the way the relay rescans a stream.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import ValidationError

from detectors import load_detector_class
from detectors.base import Cost, FindingStatus, Phase, Sample, Segment
from detectors.insecure_code.anchors import anchors
from detectors.insecure_code.detector import InsecureCodeDetector, InsecureCodeParams
from detectors.insecure_code.engine import analyse_block, shannon_entropy
from detectors.insecure_code.extract import extract_blocks, may_contain_code
from detectors.insecure_code.langid import LANGUAGES, canonical_tag, guess_language, identify
from detectors.insecure_code.lines import logical_lines
from detectors.insecure_code.rules import CATEGORIES, INFINITE, RuleError, load_rules, parse_rules

CASES = Path(__file__).parent / "code_cases"
PACK = load_rules()
DET = InsecureCodeDetector()
STREAM = "/channels/0"

_FENCE_TAG = {"other": "", "tsx": "tsx", "cpp": "cpp", "csharp": "csharp", "bash": "bash"}


def answer(code: str, lang: str) -> str:
    tag = _FENCE_TAG.get(lang, lang)
    if lang == "other":
        tag = "ini"
    return f"Here is the code:\n\n```{tag}\n{code.rstrip()}\n```\n\nLet me know if you need more.\n"


def sample(text: str, *, rid: str = "r1", source: str = "/text", phase: Phase = Phase.OUTPUT) -> Sample:
    return Sample(rid, phase, "test", (Segment("assistant", text, source),))


def scan(text: str, det: InsecureCodeDetector = DET, **kw: Any) -> Any:
    finding = det.score_sample(sample(text, **kw))
    assert finding.status is FindingStatus.OK, finding.error
    return finding


EXAMPLES = [
    (r.id, kind, i, r.example_language, code)
    for r in PACK.rules
    for kind, items in (("unsafe", r.unsafe_examples), ("safe", r.safe_examples))
    for i, code in enumerate(items)
]


# ---------------------------------------------------------------- rule packs


def test_rule_packs_cover_every_category_and_language() -> None:
    categories = {r.category for r in PACK.rules}
    assert categories == set(CATEGORIES)
    for lang in LANGUAGES:
        assert PACK.for_language(lang), lang
    assert len(PACK.rules) >= 150
    assert len({r.id for r in PACK.rules}) == len(PACK.rules)
    for r in PACK.rules:
        assert r.cwe
        assert all(c.startswith("CWE-") for c in r.cwe)
        assert r.weight >= 0.5, f"{r.id} would never reach the default threshold"


@pytest.mark.parametrize(
    ("rule_id", "kind", "index", "lang", "code"), EXAMPLES, ids=[f"{e[0]}-{e[1]}{e[2]}" for e in EXAMPLES]
)
def test_rule_example(rule_id: str, kind: str, index: int, lang: str, code: str) -> None:
    finding = scan(answer(code, lang))
    if kind == "unsafe":
        assert rule_id in finding.reasons, (finding.reasons, finding.score)
        assert finding.score >= 0.5
        spans = [s for s in finding.spans if s.reason == rule_id]
        assert spans
        assert all(0 <= s.start < s.end for s in spans)
    else:
        assert finding.score == 0.0, finding.reasons


def test_every_rule_unsafe_example_contains_its_anchors() -> None:
    # The anchor pre-filter must never hide a match: each rule fires on its example
    # through the engine, which uses the anchors (checked above); here we also check the
    # extraction itself on a pattern with a case-insensitive alternation.
    import re

    found = anchors(re.compile(r"(?i)\bhashlib\.(?:md5|sha1)\("))
    assert found == (frozenset({"hashlib."}), True)
    assert anchors(re.compile(r"\d+")) is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"rules": [{"id": "bad id"}]}, "expected an id"),
        (
            {
                "rules": [
                    {
                        "id": "PY-XX-001",
                        "title": "t",
                        "category": "nope",
                        "cwe": ["CWE-1"],
                        "severity": "high",
                    }
                ]
            },
            "unknown category",
        ),
        (
            {
                "rules": [
                    {
                        "id": "PY-XX-001",
                        "title": "t",
                        "category": "sqli",
                        "cwe": ["CWE-89"],
                        "severity": "high",
                        "languages": ["python"],
                        "pattern": "(",
                        "examples": {"safe": ["a"], "unsafe": ["b"]},
                    }
                ]
            },
            "bad regex",
        ),
        (
            {
                "rules": [
                    {
                        "id": "PY-XX-001",
                        "title": "t",
                        "category": "sqli",
                        "cwe": ["CWE-89"],
                        "severity": "high",
                        "languages": ["python"],
                        "pattern": "x",
                        "examples": {"safe": ["a"]},
                    }
                ]
            },
            "examples.unsafe",
        ),
        (
            {
                "rules": [
                    {
                        "id": "PY-XX-001",
                        "title": "t",
                        "category": "sqli",
                        "cwe": ["CWE-89"],
                        "severity": "high",
                        "languages": ["cobol"],
                        "pattern": "x",
                        "examples": {"safe": ["a"], "unsafe": ["b"]},
                    }
                ]
            },
            "unknown language",
        ),
    ],
)
def test_rule_pack_validation(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rules([("test", doc)])


def test_lookahead_classifies_rules() -> None:
    assert PACK.by_id("PY-TLS-001").lookahead == 0
    assert PACK.by_id("JV-XXE-001").lookahead == INFINITE
    assert PACK.by_id("PY-HASH-001").lookahead == 2
    deep = PACK.deep_languages()
    assert {"python", "javascript", "java", "go", "php", "ruby", "csharp", "c", "cpp"} <= deep
    assert "bash" not in deep
    assert "sql" not in deep


# ---------------------------------------------------------------- flow analysis


@pytest.mark.parametrize(
    ("lang", "code", "rule"),
    [
        # aliased imports
        ("python", "import subprocess as sp\nsp.call(cmd, shell=True)\n", "PY-CMDI-002"),
        ("python", "from os import popen as p\np('ls ' + d)\n", "PY-CMDI-001"),
        ("javascript", "const { exec: run } = require('child_process');\nrun(`ls ${dir}`);\n", "JS-CMDI-001"),
        ("go", 'import x "os/exec"\nfunc f(c string) { x.Command("sh", "-c", c).Run() }\n', "GO-CMDI-001"),
        # string building over several lines and statements
        ("python", "q = 'SELECT * FROM t WHERE a = '\nq += name\ncur.execute(q)\n", "PY-SQLI-001"),
        (
            "java",
            'StringBuilder sb = new StringBuilder("SELECT * FROM t WHERE id = ");\n'
            "sb.append(id);\nstmt.executeQuery(sb.toString());\n",
            "JV-SQLI-001",
        ),
        (
            "c",
            "char q[200];\nsprintf(q, \"SELECT * FROM t WHERE n='%s'\", name);\nmysql_query(conn, q);\n",
            "C-SQLI-001",
        ),
        (
            "php",
            "$q = \"SELECT * FROM t WHERE n = '\";\n$q .= $_GET['n'] . \"'\";\n$db->query($q);\n",
            "PHP-SQLI-002",
        ),
        ("ruby", 'q = "id = #{params[:id]}"\nUser.where(q)\n', "RB-SQLI-001"),
        (
            "csharp",
            "var sql = string.Format(\"SELECT * FROM T WHERE N = '{0}'\", n);\n"
            "var cmd = new SqlCommand(sql, conn);\n",
            "CS-SQLI-001",
        ),
        # wrappers: the sink takes a parameter; the call site passes a built string
        (
            "python",
            "def q(cur, sql):\n    cur.execute(sql)\n\ndef f(cur, n):\n    q(cur, 'SELECT ' + n)\n",
            "PY-SQLI-001",
        ),
        (
            "javascript",
            "function run(sql) { return db.query(sql); }\nrun(`DELETE FROM t WHERE id=${id}`);\n",
            "JS-SQLI-001",
        ),
        # a local helper that returns the built query
        (
            "python",
            "def build(n):\n    return f\"SELECT * FROM t WHERE n='{n}'\"\n\ncur.execute(build(name))\n",
            "PY-SQLI-001",
        ),
    ],
)
def test_flow_reaches_the_sink(lang: str, code: str, rule: str) -> None:
    assert rule in {h.rule for h in analyse_block(PACK, lang, code)}


@pytest.mark.parametrize(
    ("lang", "code"),
    [
        ("python", "TABLE = 'users'\ncur.execute(f'SELECT * FROM {TABLE} WHERE id = %s', (uid,))\n"),
        ("python", "cur.execute('SELECT * FROM t WHERE id = %s' % int(request.args['id']))\n"),
        ("python", "import shlex, os\nos.system('ls ' + shlex.quote(d))\n"),
        ("javascript", "el.innerHTML = DOMPurify.sanitize(`<b>${name}</b>`);\n"),
        ("php", "$id = intval($_GET['id']);\n$db->query(\"SELECT * FROM t WHERE id = $id\");\n"),
        ("go", 'rows, _ := db.Query("SELECT * FROM t WHERE id = $1", strconv.Itoa(id))\n'),
        ("ruby", "User.where(id: params[:id])\n"),
        ("javascript", "const text = await (await fetch(API_URL)).text();\nres.send(text);\n"),
    ],
)
def test_flow_recognises_safe_forms(lang: str, code: str) -> None:
    assert analyse_block(PACK, lang, code) == ()


def test_comments_do_not_fire() -> None:
    code = "# never do: os.system('rm -rf ' + path)\n# requests.get(url, verify=False)\nx = 1\n"
    assert analyse_block(PACK, "python", code) == ()


def test_logical_lines_join_open_brackets_and_strip_comments() -> None:
    lines = ["data = yaml.load(f,  # comment (", "    Loader=yaml.SafeLoader)", "x = 2"]
    groups = logical_lines(lines, "python")
    assert [(g.first, g.last) for g in groups] == [(0, 1), (2, 2)]
    assert "comment" not in groups[0].text
    assert [(g.first, g.last) for g in logical_lines(lines, "python", complete=1)] == []


def test_entropy() -> None:
    assert shannon_entropy("aaaaaaaa") == 0.0
    assert shannon_entropy("9f2c1e7ab04d4d8fb31c6e5a7d20c4e1") > 3.3


# ---------------------------------------------------------------- extraction and language id


def test_extract_fenced_tagged_untagged_tilde_and_indented_fence() -> None:
    text = (
        "Intro\n```python\nx = 1\n```\nmid\n```\nplain()\n```\n- item\n   ~~~js\n   let a = 1;\n   ~~~\nend\n"
    )
    blocks = [b for b in extract_blocks(text) if b.kind == "fenced"]
    assert [(b.tag, b.closed, b.indent) for b in blocks] == [
        ("python", True, 0),
        ("", True, 0),
        ("js", True, 3),
    ]
    assert text[blocks[0].start : blocks[0].end] == "x = 1"
    assert text[blocks[1].start : blocks[1].end] == "plain()"


def test_extract_open_fence_indented_block_inline_and_loose() -> None:
    open_text = "Text\n```go\nfunc main() {\n"
    [b] = extract_blocks(open_text)
    assert b.kind == "fenced"
    assert not b.closed
    assert b.tag == "go"
    assert b.end == len(open_text)
    indented = "Run this:\n\n    import os\n    os.system(cmd)\n\nDone."
    kinds = [b.kind for b in extract_blocks(indented)]
    assert kinds == ["indented"]
    inline = "Use `subprocess.run([...])` instead of `os.system(cmd)`, not `this`."
    assert [inline[b.start : b.end] for b in extract_blocks(inline)] == [
        "subprocess.run([...])",
        "os.system(cmd)",
    ]
    loose = "import os\nimport sys\nos.system(sys.argv[1])\n"
    assert [b.kind for b in extract_blocks(loose)] == ["loose"]


def test_prose_fast_path() -> None:
    prose = "This answer has no code at all. It explains a concept in plain words, twice. " * 20
    assert not may_contain_code(prose)
    finding = scan(prose)
    assert finding.score == 0.0
    assert finding.spans == ()


@pytest.mark.parametrize(
    ("tag", "code", "expected"),
    [
        ("py", "x = 1", "python"),
        ("TSX", "", "tsx"),
        ("c++", "", "cpp"),
        ("C#", "", "csharp"),
        ("shell-session", "", "bash"),
        ("postgresql", "", "sql"),
        ("yaml", "password: x", "other"),
        ("", "def f(x):\n    return x\n", "python"),
        ("", "package main\n\nfunc main() {\n\tx := 1\n}\n", "go"),
        ("", "<?php\n$x = $_GET['a'];\n", "php"),
        ("", '#include <stdio.h>\nint main(void) { printf("hi"); }\n', "c"),
        ("", "#include <iostream>\nint main() { std::cout << 1; }\n", "cpp"),
        ("", "using System;\nnamespace A { class B { } }\n", "csharp"),
        (
            "",
            "public class A {\n  public static void main(String[] args) { System.out.println(1); }\n}\n",
            "java",
        ),
        ("", "const fs = require('fs');\nconsole.log(1);\n", "javascript"),
        ("", "interface A { b: string }\nconst x: number = 1;\n", "typescript"),
        ("code", "def index\n  @users = User.all\nend\n", "ruby"),
        ("", "#!/bin/bash\nset -e\necho hi\n", "bash"),
        ("", "SELECT id FROM users WHERE id = 1;\n", "sql"),
        ("", "hello there", "other"),
        # An untagged CI pipeline is data: its "script:" lines are not Python block openers.
        (
            "",
            "image: debian:latest\n\nstages:\n  - deploy\n\ndeploy:\n  stage: deploy\n  script:\n"
            "    - apt-get install -y openssh-client\n    - eval $(ssh-agent -s)\n",
            "other",
        ),
        # Python made of block openers and statements is still Python.
        ("", "try:\n    import yaml\nexcept ImportError:\n    yaml = None\nelse:\n    pass\n", "python"),
    ],
)
def test_language_identification(tag: str, code: str, expected: str) -> None:
    assert identify(tag, code) == expected


def test_canonical_tags_and_guess() -> None:
    assert canonical_tag("golang") == "go"
    assert canonical_tag("json") is None
    assert guess_language("") == "other"


def test_untagged_block_is_identified_and_scanned() -> None:
    text = "Try:\n\n```\nimport os\ndef run(host):\n    os.system('ping ' + host)\n```\n"
    assert "PY-CMDI-001" in scan(text).reasons


def test_inline_snippets_are_evidence_but_do_not_block() -> None:
    assert scan((CASES / "mixed_prose_inline.md").read_text()).score == 0.0  # advice, language unknown
    text = answer("print(1)\n", "python") + "Never write `os.system(cmd)` with user input."
    finding = scan(text)
    assert 0.0 < finding.score < 0.5
    assert finding.reasons == ("PY-CMDI-001",)
    secret = scan("Your key is `AKIAQ3EGRXR7PLMNW2TD`, keep it safe.")
    assert secret.score >= 0.9
    assert secret.reasons == ("GEN-SECRET-001",)


def test_spans_cover_the_vulnerable_line() -> None:
    text = (CASES / "vuln_python_sqli.md").read_text()
    finding = scan(text)
    [span] = [s for s in finding.spans if s.reason == "PY-SQLI-001"]
    assert text[span.start : span.end] == "row = conn.execute(query).fetchone()"


# ---------------------------------------------------------------- detector contract


def test_registered_and_metadata() -> None:
    assert load_detector_class("insecure_code") is InsecureCodeDetector
    assert InsecureCodeDetector.phases == frozenset({Phase.OUTPUT, Phase.INPUT})
    assert InsecureCodeDetector.cost is Cost.CHEAP
    info = DET.rule_info("PY-SQLI-001")
    assert info.cwe == ("CWE-89",)
    assert info.category == "sqli"
    assert info.languages == ("python",)


def test_params_validation() -> None:
    with pytest.raises(ValidationError):
        InsecureCodeDetector.parse_params({"languages": ["cobol"]})
    with pytest.raises(ValidationError):
        InsecureCodeDetector.parse_params({"no_such_knob": 1})
    det = InsecureCodeDetector("ic", InsecureCodeParams(disabled_rules=("NOPE-XX-001",)))
    finding = det.score_sample(sample("```python\nx = 1\n```"))
    assert finding.status is FindingStatus.ERROR


def test_disabled_rules_and_language_filter() -> None:
    code = answer("import os\nos.system(cmd)\n", "python")
    off = InsecureCodeDetector("ic", InsecureCodeParams(disabled_rules=("PY-CMDI-001",)))
    assert off.score_sample(sample(code)).score == 0.0
    only_go = InsecureCodeDetector("ic", InsecureCodeParams(languages=("go",)))
    assert only_go.score_sample(sample(code)).score == 0.0


async def test_input_phase_is_skipped_unless_enabled() -> None:
    text = answer("import os\nos.system(cmd)\n", "python")
    [f] = await DET.score([sample(text, phase=Phase.INPUT)])
    assert f.status is FindingStatus.SKIPPED
    on = InsecureCodeDetector("ic", InsecureCodeParams(screen_input=True))
    [f] = await on.score([sample(text, phase=Phase.INPUT)])
    assert f.status is FindingStatus.OK
    assert f.score >= 0.5


async def test_async_score_uses_the_pool_and_keeps_order() -> None:
    det = InsecureCodeDetector("ic", InsecureCodeParams(inline_chars=0, workers=2))
    await det.start()
    try:
        assert det.ready
        texts = [
            answer("import os\nos.system(cmd)\n", "python"),
            "just prose",
            answer("x = 1\n", "python"),
            (CASES / "vuln_js_xss.md").read_text(),
        ]
        findings = await det.score([sample(t, rid=f"r{i}") for i, t in enumerate(texts)])
        assert [f.score >= 0.5 for f in findings] == [True, False, False, True]
    finally:
        await det.close()
    assert not det.ready


# ---------------------------------------------------------------- streaming


def _stream(det: InsecureCodeDetector, text: str, cuts: list[int], rid: str) -> list[Any]:
    out = []
    for n in cuts:
        out.append(
            (n, det.score_sample(sample(text[:n], rid=rid, source=STREAM)), det.stream_safe_prefix(text[:n]))
        )
    return out


@pytest.mark.parametrize(
    ("case", "rule", "marker"),
    [
        ("vuln_python_sqli.md", "PY-SQLI-001", "row = conn.execute(query).fetchone()"),
        ("vuln_bash_tls.md", "SH-TLS-001", 'curl -sSk "https://artifacts.internal'),
        ("vuln_js_xss.md", "JS-XSS-001", "header.innerHTML ="),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_matches_whole_scan_and_never_releases_the_vulnerable_line(
    case: str, rule: str, marker: str, seed: int
) -> None:
    text = (CASES / case).read_text()
    det = InsecureCodeDetector()
    whole = scan(text, det, rid="whole")
    assert rule in whole.reasons
    line_start = text.index(marker)
    line_end = text.index("\n", line_start)
    rng = random.Random(seed)
    points = {rng.randrange(1, len(text)) for _ in range(60)} | set(range(0, len(text), 64))
    cuts = [*sorted(points), len(text)]
    fired_at = None
    for n, finding, safe in _stream(det, text, cuts, rid=f"s{seed}"):
        assert 0 <= safe <= n
        if fired_at is None and finding.score >= 0.5:
            fired_at = n
        if n <= line_end:
            # Until the vulnerable line is complete, nothing of it may be released...
            assert safe <= line_start, (n, safe, text[safe - 10 : safe])
        if finding.score >= 0.5:
            # ...and a finding mid-stream is the real one, never a false alarm.
            assert rule in finding.reasons
    assert fired_at is not None
    assert fired_at > line_end
    final = det.score_sample(sample(text, rid=f"s{seed}", source=STREAM + "#final"))
    assert final.reasons == whole.reasons
    assert final.spans == whole.spans


@pytest.mark.parametrize("case", ["safe_python_sqli.md", "safe_java_xxe.md", "mixed_prose_inline.md"])
def test_streaming_a_safe_answer_never_fires_and_ends_fully_released(case: str) -> None:
    text = (CASES / case).read_text()
    det = InsecureCodeDetector()
    for n, finding, safe in _stream(det, text, [*list(range(1, len(text) + 1, 7)), len(text)], rid="safe"):
        assert finding.score < 0.5, (n, finding.reasons)
        assert 0 <= safe <= n
    assert det.stream_safe_prefix(text) == len(text)


def test_safe_prefix_releases_prose_holds_open_blocks() -> None:
    prose = "The answer is simple: use a set instead of a list."
    assert DET.stream_safe_prefix(prose) == len(prose)
    assert DET.stream_safe_prefix("Use the `os.sys") == len("Use the ")
    assert DET.stream_safe_prefix("Look:\n``") == len("Look:\n")
    held = "Here:\n\n```python\nimport os\nos.sys"
    assert DET.stream_safe_prefix(held) == held.index("```")
    untagged = "Here:\n```\necho hi\n"
    assert DET.stream_safe_prefix(untagged) == untagged.index("```")
    shell = "Here:\n```bash\nset -e\ncurl -k https://x \\\n  -o out\nec"
    assert DET.stream_safe_prefix(shell) == shell.index("ec", shell.index("out"))
    continued = "Here:\n```bash\nset -e\ncurl -k https://x \\\n  -o o"
    assert DET.stream_safe_prefix(continued) == continued.index("curl")
    closed = "A:\n```python\nx = 1\n```\nThen more prose"
    assert DET.stream_safe_prefix(closed) == len(closed)


def test_open_block_at_end_of_a_complete_answer_is_analysed_fully() -> None:
    text = (
        "Truncated answer:\n```java\nDocumentBuilderFactory f = DocumentBuilderFactory.newInstance();\n"
        "f.newDocumentBuilder().parse(in);\n"
    )
    assert "JV-XXE-001" in scan(text).reasons
    # In flight, a rule that needs the rest of the block waits for it to close.
    assert scan(text, source=STREAM).score == 0.0


def test_stream_cache_is_bounded_lru() -> None:
    det = InsecureCodeDetector("ic", InsecureCodeParams(stream_cache_size=4))
    text = answer("import os\nos.system(cmd)\n", "python")
    for i in range(10):
        det.score_sample(sample(text, rid=f"r{i}", source=STREAM))
    assert len(det._streams) == 4
    # Reusing a request id with a shorter text starts over instead of trusting stale state.
    assert det.score_sample(sample("x", rid="r9", source=STREAM)).score == 0.0


def test_incremental_scans_reuse_closed_blocks() -> None:
    det = InsecureCodeDetector()
    block = answer("import os\nos.system(cmd)\n", "python")
    text = block + "\nAnd another:\n```python\nprint(1)\n"
    det.score_sample(sample(text, rid="inc", source=STREAM))
    state = det._streams.get(("inc", STREAM))
    assert state.resume > 0
    assert len(state.closed) == 1
    more = det.score_sample(sample(text + "print(2)\n", rid="inc", source=STREAM))
    assert "PY-CMDI-001" in more.reasons
    assert len(state.closed) == 1


# ---------------------------------------------------------------- robustness


_alphabet = st.sampled_from(
    [*list("abc(){}[];:=+-*/'\"`$#@!\\<> \n\t~_.,%&|?"), "```", "```python\n", "~~~", "    ", "\u200b", "😀"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_alphabet, max_size=120).map("".join), st.sampled_from(["/text", STREAM, STREAM + "#final"]))
def test_never_raises(text: str, source: str) -> None:
    finding = DET.score_sample(sample(text, source=source, rid="h"))
    assert finding.status is FindingStatus.OK, finding.error
    assert 0.0 <= finding.score <= 1.0
    for s in finding.spans:
        assert 0 <= s.start <= s.end <= len(text)
    safe = DET.stream_safe_prefix(text)
    assert safe is None or 0 <= safe <= len(text)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(LANGUAGES), st.text(max_size=300))
def test_engine_never_raises_on_any_language(lang: str, code: str) -> None:
    for closed in (True, False):
        for hit in analyse_block(PACK, lang, code, closed=closed):
            assert 0 <= hit.first <= hit.last


def test_deeply_nested_input_is_bounded() -> None:
    code = (
        "x = "
        + "(" * 3000
        + "a"
        + ")" * 3000
        + "\ncur.execute('SELECT ' + "
        + "(" * 500
        + "n"
        + ")" * 500
        + ")\n"
    )
    finding = scan(answer(code, "python"))
    assert finding.status is FindingStatus.OK


def test_async_score_never_raises_on_bad_samples() -> None:
    async def go() -> list[Any]:
        return await DET.score([sample("```python\n" + "\x00" * 10 + "\n```"), sample("")])

    for f in asyncio.run(go()):
        assert f.status is FindingStatus.OK


# ---------------------------------------------------------------- benchmark and eval --suite code


def test_benchmark_data_is_balanced_and_labelled() -> None:
    from firewall.evaluation.code_eval import load_code_answers

    answers = load_code_answers()
    assert len(answers) >= 200
    vulnerable = [a for a in answers if a.vulnerable]
    assert len(vulnerable) * 2 == len(answers)
    langs = {a.language for a in answers}
    assert {
        "python",
        "javascript",
        "typescript",
        "tsx",
        "java",
        "c",
        "cpp",
        "csharp",
        "go",
        "php",
        "ruby",
    } <= langs
    assert {"bash", "sql"} <= langs
    assert {a.category for a in answers} == set(CATEGORIES)
    assert all(a.cwe and all(c.startswith("CWE-") for c in a.cwe) for a in vulnerable)
    assert {a.split for a in answers} == {"dev", "holdout", "holdout2"}
    with pytest.raises(ValueError, match="duplicate id"):
        load_code_answers(
            b'{"id": "a", "language": "c", "category": "x", "vulnerable": false, "text": "t"}\n' * 2
        )


def test_benchmark_meets_the_targets() -> None:
    """Guards the numbers docs/detectors/insecure_code.md reports (F1 >= 0.85, <= 5% safe flagged)."""
    from firewall.evaluation.code_eval import Counts, load_code_answers

    counts = Counts()
    for a in load_code_answers():
        finding = DET.score_sample(sample(a.text, rid=a.id))
        assert finding.status is FindingStatus.OK, (a.id, finding.error)
        counts.add(a.vulnerable, finding.score >= 0.5)
    assert counts.f1 >= 0.85, counts
    assert counts.safe_flag_rate <= 0.05, counts


def test_eval_cli_code_suite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import orjson

    from firewall.cli.main import main
    from firewall.evaluation import code_eval

    monkeypatch.delenv("TRIGGER_FIREWALL_CONFIG", raising=False)
    subset = code_eval.load_code_answers()[:24]
    monkeypatch.setattr(code_eval, "load_code_answers", lambda raw=None: subset)
    out = tmp_path / "code.json"
    assert main(["eval", "--suite", "code", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "insecure-code benchmark: 24 answers" in table
    assert "per language" in table
    assert "per category" in table
    assert "p95" in table
    data = orjson.loads(out.read_bytes())
    assert data["suite"] == "code"
    assert data["answers"] == 24
    assert data["overall"]["tp"] + data["overall"]["fn"] == 12
    assert data["latency"]["detector"]["n"] == 24 * 3


def test_code_suite_counts() -> None:
    from firewall.evaluation.code_eval import Counts

    c = Counts()
    for vulnerable, flagged in [(True, True), (True, False), (False, False), (False, True), (True, True)]:
        c.add(vulnerable, flagged)
    assert (c.tp, c.fn, c.tn, c.fp) == (2, 1, 1, 1)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.safe_flag_rate == pytest.approx(0.5)


# ---------------------------------------------------------------- false alarms on real answers


@pytest.mark.parametrize(
    "snippet",
    [
        "```bash\nGENIUS_CLIENT_SECRET=your_client_secret\n```",
        "```yaml\nenvironment:\n  - APPLICATION_SECRET=random-secret\n```",
        "```bash\nexport API_TOKEN=changeme_changeme\n```",
        '```python\nSECRET_KEY = "example-secret-key-1234567890"\n```',
        '```python\nAPI_KEY = "xxxxxxxxxxxxxxxxxxxxxxxx1"\n```',
    ],
)
def test_placeholder_secrets_pass(snippet: str) -> None:
    assert scan(snippet).score == 0.0


@pytest.mark.parametrize(
    "snippet",
    [
        "```bash\nexport AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYzq81hZ4\n```",
        '```python\nsparkpost_api_key="5d4d97f437cb777fdaa63f6c9af1e62230e7f12b"\n```',
    ],
)
def test_real_looking_secrets_still_fire(snippet: str) -> None:
    assert scan(snippet).score >= 0.5


def test_command_line_arguments_are_not_web_input() -> None:
    # Whoever runs a script chooses its arguments: a CLI that opens the file it is given is
    # not path traversal. A web handler's parameter still is.
    cli = "```python\nimport sys\n\nwith open(sys.argv[1]) as fh:\n    print(fh.read())\n```"
    assert scan(cli).score == 0.0
    web = (
        "```python\nfrom flask import request\n\n@app.route('/f')\ndef f():\n"
        "    return open(request.args['name']).read()\n```"
    )
    assert scan(web).score >= 0.5


def test_serialised_data_shown_in_a_pre_is_not_xss() -> None:
    shown = (
        "```javascript\n"
        'document.getElementById("r").innerHTML = `<pre>${JSON.stringify(data, null, 2)}</pre>`;\n```'
    )
    assert scan(shown).score == 0.0
    markup = (
        '```javascript\nconst q = new URLSearchParams(location.search).get("q");\n'
        'el.innerHTML = "<b>" + q + "</b>";\n```'
    )
    assert scan(markup).score >= 0.5


def test_a_fence_tag_the_content_contradicts_is_overridden() -> None:
    # Pages converted to Markdown label every block with one language: JavaScript in a block
    # tagged php, its template literals read as PHP backtick shell commands.
    js = (
        "```php\nimport axios from 'axios';\nconst fileName = `invoices/${id}/${name}.pdf`;\n"
        "async function fetchData() {\n  const res = await axios.get(url);\n  console.log(res.data);\n"
        "  document.title = fileName;\n}\n```"
    )
    assert scan(js).score == 0.0
    php = "```php\n<?php\n$out = `ls -la $dir`;\n```"
    assert scan(php).score >= 0.5


# ---------------------------------------------------------------- reviewed false alarms (ShareGPT dev)


@pytest.mark.parametrize(
    ("safe", "unsafe"),
    [
        # placeholder passwords in connection URLs; an interpolated one is not written in
        (
            '```python\ndb = Manager("postgresql://myuser:mypassword@localhost:5432/mydb")\n```',
            '```python\ndb = Manager("postgresql://shop:Vq8#rT2m@db.internal:5432/shop")\n```',
        ),
        (
            '```python\nurl = f"postgresql://{self.user}:{self.password}@{self.host}/db"\n```',
            '```python\nurl = f"postgresql://{self.user}:Vq8rT2mZ@{self.host}/db"\n```',
        ),
        # placeholder and sample values assigned to a password
        (
            '```json\n{"name": "Jane", "password": "hashed_password"}\n```',
            '```json\n{"name": "Jane", "password": "Tr0ub4dor&3x"}\n```',
        ),
        (
            '```python\npayload = {"username": "john_doe", "password": "123456"}\n```',
            '```python\npayload = {"username": "john_doe", "password": "193846"}\n```',
        ),
        (
            "```sql\nCREATE USER 'moodle'@'localhost' IDENTIFIED BY 'yourpassword';\n```",
            "```sql\nCREATE USER 'moodle'@'localhost' IDENTIFIED BY 'S3cure!Pass2024';\n```",
        ),
        (
            "```sql\nSELECT 1;\ncnx = connect(user='username', password='password', host='hostname')\n```",
            "```sql\nALTER USER app WITH PASSWORD 'Zk2!vR8qLm';\n```",
        ),
        # a Kubernetes secretName names the Secret object; an inline value is still a secret
        (
            "```yaml\nvolumes:\n  - name: creds\n    secret:\n      secretName: minio-creds-2024\n```",
            "```yaml\nenv:\n  minio_secret: wJalrXUtnFEMIK7MDENGbPxRfi\n```",
        ),
    ],
)
def test_placeholder_and_referenced_secrets_pass(safe: str, unsafe: str) -> None:
    assert scan(safe).score == 0.0
    assert scan(unsafe).score >= 0.5


@pytest.mark.parametrize(
    ("lang", "safe", "unsafe", "rule"),
    [
        # a method named compile / Function is not the builtin or the global constructor
        (
            "python",
            "import re\ndef m(f):\n    return re.compile(f.replace('0', '[0-9]+'))\n",
            "def m(src):\n    return compile(src, '<x>', 'exec')\n",
            "PY-CODE-001",
        ),
        (
            "typescript",
            "import * as lambda from 'aws-cdk-lib/aws-lambda';\n"
            "const f = new lambda.Function(this, 'Fn', { runtime: rt, handler: 'index.handler', code });\n",
            "function mk(expr: string) {\n  return new Function('x', 'return ' + expr);\n}\n",
            "JS-CODE-001",
        ),
        # a function given to setTimeout is not a string, whatever its body builds
        (
            "javascript",
            "setTimeout(() => {\n  sq.style.left = x + 'px';\n}, 1500);\n",
            "setTimeout('move(' + location.hash.slice(1) + ')', 1500);\n",
            "JS-CODE-002",
        ),
        # a database get() is not an HTTP request; a client's request('GET', $url) is
        (
            "php",
            "$id = $db->get('tbl_users', 'user_id', ['token' => $_COOKIE['token']]);\n",
            "$res = $client->request('GET', $_GET['url']);\n",
            "PHP-SSRF-001",
        ),
        # command-line arguments and console input are the operator's, not a web client's
        (
            "csharp",
            "static void Main(string[] args) {\n    string folder = args[0];\n"
            '    var files = Directory.GetFiles(folder, "*.zip");\n'
            "    var fs = new FileStream(folder, FileMode.Open);\n}\n",
            "[HttpGet]\npublic IActionResult Get(string name) {\n"
            '    return PhysicalFile(Path.Combine(root, name), "text/plain");\n}\n',
            "CS-PATH-001",
        ),
        (
            "java",
            "BufferedReader br = new BufferedReader(new InputStreamReader(System.in));\n"
            "String filename = br.readLine();\nreader = new BufferedReader(new FileReader(filename));\n",
            "BufferedReader br = new BufferedReader(new InputStreamReader(socket.getInputStream()));\n"
            "String filename = br.readLine();\nreader = new BufferedReader(new FileReader(filename));\n",
            "JV-PATH-001",
        ),
        # a parameter declared as a number cannot carry SQL; a string one can
        (
            "java",
            '@PutMapping("/{id}")\npublic User update(@PathVariable Long id, @RequestBody UserDto dto) {\n'
            "    return userService.update(id, dto);\n}\n",
            '@GetMapping("/u")\npublic User find(@RequestParam String name) {\n'
            "    return jdbcTemplate.queryForObject(\n"
            '        "SELECT * FROM u WHERE n = \'" + name + "\'", mapper);\n}\n',
            "JV-SQLI-001",
        ),
        # a StringBuilder of constant fragments with ? placeholders is constant SQL
        (
            "java",
            'StringBuilder sql = new StringBuilder("SELECT * FROM t ").append("WHERE 1=1 ");\n'
            'sql.append("AND a = ? ");\n'
            "List<R> r = jdbcTemplate.query(sql.toString(), params.toArray(), mapper);\n",
            'StringBuilder sql = new StringBuilder("SELECT * FROM t ").append("WHERE a = ").append(a);\n'
            "List<R> r = jdbcTemplate.query(sql.toString(), mapper);\n",
            "JV-SQLI-001",
        ),
        # integers reach the query: a numeric ternary and arithmetic on a row value
        (
            "php",
            "$fav = ($_POST['favorited'] === 'true') ? 1 : -1;\n$n = $row['count'] + $fav;\n"
            '$conn->query("UPDATE ama SET c = {$n} WHERE id = 1");\n',
            "$fav = ($_POST['favorited'] === 'true') ? $_POST['a'] : $_POST['b'];\n"
            '$conn->query("UPDATE ama SET c = {$fav} WHERE id = 1");\n',
            "PHP-SQLI-002",
        ),
        # a command built from the script's own directory and constants
        (
            "javascript",
            "const { exec } = require('child_process');\nconst path = require('path');\n"
            "const dir = path.join(__dirname, '..');\nconst sep = os.platform() === 'win32' ? '&' : ';';\n"
            "exec(`yarn --cwd ${dir} build${sep}`);\n",
            "const { exec } = require('child_process');\nconst dir = path.join(__dirname, req.query.d);\n"
            "exec(`yarn --cwd ${dir} build`);\n",
            "JS-CMDI-001",
        ),
        # a URL whose literal start fixes the host; a relative same-origin path
        (
            "python",
            "@app.route('/m')\ndef m():\n    team = request.json['team']\n"
            "    return requests.post(f'https://graph.microsoft.com/v1.0/teams/{team}/messages').text\n",
            "@app.route('/m')\ndef m():\n    host = request.json['host']\n"
            "    return requests.post(f'https://{host}/v1.0/messages').text\n",
            "PY-SSRF-001",
        ),
        (
            "tsx",
            "const onChange = async (event: any) => {\n"
            "  const r = await axios.get(`/search?q=${event.target.value}`);\n};\n",
            "const onChange = async (event: any) => {\n"
            "  const r = await axios.get(`//${event.target.value}/search`);\n};\n",
            "JS-SSRF-001",
        ),
    ],
)
def test_reviewed_false_alarm_classes(lang: str, safe: str, unsafe: str, rule: str) -> None:
    assert rule not in {h.rule for h in analyse_block(PACK, lang, safe)}
    assert rule in {h.rule for h in analyse_block(PACK, lang, unsafe)}


_PAGE = (
    '<!DOCTYPE html>\n<html>\n<body>\n<div id="clock"></div>\n<input id="city">\n'
    "<script>\n{}\n</script>\n</body>\n</html>\n"
)


@pytest.mark.parametrize(
    ("safe", "unsafe"),
    [
        # numbers: clock readings, counts, arithmetic
        (
            "var d = new Date();\nvar hours = d.getHours();\nvar minutes = d.getMinutes();\n"
            'document.getElementById("clock").innerHTML = hours + ":" + minutes;\n',
            'var city = document.getElementById("city").value;\n'
            'document.getElementById("clock").innerHTML = "Time in " + city;\n',
        ),
        # the page's own attributes and constant arrays, through map callbacks
        (
            "const area = document.querySelector('area');\nconst name = area.getAttribute('alt');\n"
            "const links = [{ text: 'A', href: '#' }];\n"
            "info.innerHTML = `<h2>${name}</h2>`\n"
            "  + links.map(l => `<a href=\"${l.href}\">${l.text}</a>`).join('');\n",
            "fetch('/api/posts').then(r => r.json()).then(data => {\n"
            "  info.innerHTML = data.map(p => `<li>${p.title}</li>`).join('');\n});\n",
        ),
        # an API's own result (a model's prediction) vs a fetched response's text
        (
            "const predictions = await model.predict(input);\nconst names = await model.classNames();\n"
            'document.getElementById("result").innerHTML = "Class: " + names[predictions.argMax()];\n',
            "const response = await fetch('/api/submit', { method: 'POST', body: form });\n"
            "const text = await response.text();\n"
            'document.getElementById("result").innerHTML = text;\n',
        ),
        # a helper called only with constants vs one called with the URL
        (
            "function show(title) {\n  modal.innerHTML = `<h5>${title}</h5>`;\n}\nshow('Welcome');\n",
            "function show(title) {\n  modal.innerHTML = `<h5>${title}</h5>`;\n}\n"
            "show(decodeURIComponent(location.hash.slice(1)));\n",
        ),
        # jQuery request data and an XHR's response text
        (
            "setTimeout(ts => { out.innerHTML = 'Done'; }, 10);\n",
            "$.get('/api/msg', function (data) {\n  out.innerHTML = data;\n});\n"
            "xhr.onload = () => { box.innerHTML = xhr.responseText; };\n",
        ),
    ],
)
def test_dom_xss_needs_untrusted_text(safe: str, unsafe: str) -> None:
    assert "JS-XSS-001" not in {h.rule for h in analyse_block(PACK, "javascript", safe)}
    assert "JS-XSS-001" in {h.rule for h in analyse_block(PACK, "javascript", unsafe)}


@pytest.mark.parametrize(
    "code",
    [
        # a helper never called here (its caller is not shown) and a name defined nowhere
        "export function renderBio(el, html) {\n  el.innerHTML = `<p>${html}</p>`;\n}\n",
        'document.getElementById("content").innerHTML = text;\n',
        # a component's props and an event handler's data are set where the snippet does not show
        "class Box extends Component {\n  componentDidMount() {\n"
        "    this.el.innerHTML = this.props.html;\n  }\n}\n",
        "socket.on('chat', msg => {\n  log.innerHTML += `<li>${msg.text}</li>`;\n});\n",
    ],
)
def test_dom_xss_keeps_firing_on_unseen_origins(code: str) -> None:
    assert "JS-XSS-001" in {h.rule for h in analyse_block(PACK, "javascript", code)}


def test_dom_xss_sources_do_not_taint_server_side_rules() -> None:
    # A fetched response is untrusted in a page, not request data in a server handler.
    code = (
        "app.get('/x', async (req, res) => {\n  const r = await fetch(API);\n"
        "  res.send(await r.text());\n});\n"
    )
    assert "JS-XSS-004" not in {h.rule for h in analyse_block(PACK, "javascript", code)}


def test_html_page_is_parsed_as_its_script() -> None:
    # The markup around an inline script no longer hides its declarations from the flow analysis.
    safe = _PAGE.format("function tick() {\n  var d = new Date();\n  var h = d.getHours();\n"
                        '  document.getElementById("clock").innerHTML = h + "h";\n}\n')  # fmt: skip
    unsafe = _PAGE.format('function go() {\n  var c = document.getElementById("city").value;\n'
                          '  document.getElementById("clock").innerHTML = c;\n}\n')  # fmt: skip
    assert analyse_block(PACK, "javascript", safe) == ()
    hits = analyse_block(PACK, "javascript", unsafe)
    assert [(h.rule, h.first) for h in hits] == [("JS-XSS-001", 8)]


def _rules(lang: str, code: str) -> set[str]:
    return {h.rule for h in analyse_block(PACK, lang, code)}


@pytest.mark.parametrize(
    "code",
    [
        "char *dup(const char *s) {\n  char *d = malloc(strlen(s) + 1);\n  strcpy(d, s);\n  return d;\n}\n",
        "wchar_t *dup(const wchar_t *s) {\n"
        "  wchar_t *d = (wchar_t *)malloc((wcslen(s) + 1) * sizeof(wchar_t));\n"
        "  wcscpy(d, s);\n  return d;\n}\n",
        # through a length variable, and an object's recorded length for its string
        "class Str {\n  char *str; int len;\n public:\n  Str(const char *s) {\n    len = strlen(s);\n"
        "    str = new char[len + 1];\n    strcpy(str, s);\n  }\n  Str(const Str &o) {\n    len = o.len;\n"
        "    str = new char[len + 1];\n    strcpy(str, o.str);\n  }\n};\n",
    ],
)
def test_copy_into_a_buffer_sized_from_the_source_is_bounded(code: str) -> None:
    assert "C-COPY-002" not in _rules("cpp", code)


@pytest.mark.parametrize(
    "code",
    [
        # a fixed array, a buffer sized from another string, no room for the terminator, an append
        "void f(const char *s) {\n  char buf[16];\n  strcpy(buf, s);\n}\n",
        "void f(const char *s, const char *t) {\n  char *d = malloc(strlen(t) + 1);\n  strcpy(d, s);\n}\n",
        "void f(const char *s) {\n  char *d = malloc(strlen(s));\n  strcpy(d, s);\n}\n",
        "void f(const char *s) {\n  char *d = malloc(strlen(s) + 1);\n"
        '  strcpy(d, "x");\n  strcat(d, s);\n}\n',
    ],
)
def test_copy_into_a_buffer_not_sized_from_the_source_fires(code: str) -> None:
    assert "C-COPY-002" in _rules("cpp", code)
