"""An answer's code blocks of one language read as one program (insecure_code, fifth round).

Blocks of one answer are parts of one program: an import, a declaration or a helper in an
earlier block informs a sink in a later one. Only *earlier* blocks inform a block, so a
stream judges each block as the whole text does (later rows never undo a finding) and a
closed block's cached hits stay valid.
"""

from __future__ import annotations

import random

import pytest

from detectors.base import FindingStatus, Phase, Sample, Segment
from detectors.insecure_code.detector import InsecureCodeDetector
from detectors.insecure_code.engine import analyse_block
from detectors.insecure_code.rules import load_rules

PACK = load_rules()
STREAM = "/channels/0"


def _answer(*blocks: tuple[str, str]) -> str:
    parts = ["Here is how to do it."]
    for tag, code in blocks:
        parts.append(f"Next:\n```{tag}\n{code.rstrip()}\n```")
    parts.append("Let me know if you need more.\n")
    return "\n\n".join(parts)


def _reasons(
    text: str, *, rid: str = "r", source: str = "/text", det: InsecureCodeDetector | None = None
) -> set[str]:
    finding = (det or InsecureCodeDetector()).score_sample(
        Sample(rid, Phase.OUTPUT, "test", (Segment("assistant", text, source),))
    )
    assert finding.status is FindingStatus.OK, finding.error
    return set(finding.reasons) if finding.score >= 0.5 else set()


_IMPORT_CSS = ("jsx", "import styles from '../styles/page.css';")
_STYLE_TAG = (
    "jsx",
    "export default function Page() {\n  return <style dangerouslySetInnerHTML={{ __html: styles }} />;\n}",
)
_STYLE_TAG_TO_STRING = (
    "jsx",
    "export default function Page() {\n"
    "  return <style dangerouslySetInnerHTML={{ __html: styles.toString() }} />;\n}",
)


@pytest.mark.parametrize(
    ("context", "sink", "rule"),
    [
        # an imported stylesheet (imported in the block before) is the app's own code
        (_IMPORT_CSS, _STYLE_TAG, "JS-XSS-003"),
        (_IMPORT_CSS, _STYLE_TAG_TO_STRING, "JS-XSS-003"),
        # a constant declared in an earlier block
        (
            ("javascript", 'const banner = "<b>Saved</b>";'),
            ("javascript", "status.innerHTML = banner;"),
            "JS-XSS-001",
        ),
    ],
)
def test_an_earlier_block_defines_what_a_later_sink_uses(
    context: tuple[str, str], sink: tuple[str, str], rule: str
) -> None:
    assert rule not in _reasons(_answer(context, sink))
    # alone, the name is defined nowhere and may hold anything
    assert rule in _reasons(_answer(sink))


def test_an_earlier_block_can_also_show_the_source() -> None:
    source = ("python", 'from flask import request\nname = request.args["name"]')
    sink = ("python", 'return render_template_string("<h1>Hello " + name + "</h1>")')
    assert "PY-XSS-002" in _reasons(_answer(source, sink))
    assert "PY-XSS-002" not in _reasons(_answer(sink))


def test_a_block_keeps_its_own_assignments() -> None:
    # An answer often shows a program twice (before and after a fix): a name the block
    # assigns itself is not mixed with the earlier version's value.
    before = ("python", 'q = "SELECT * FROM users WHERE name = \'" + request.args["name"] + "\'"')
    after = ("python", 'q = "SELECT * FROM users WHERE name = %s"\ncur.execute(q, (request.args["name"],))')
    assert not _reasons(_answer(before, after))
    reuse = ("python", "cur.execute(q)")
    assert "PY-SQLI-001" in _reasons(_answer(before, reuse))


def test_other_languages_and_inline_snippets_are_not_context() -> None:
    css = ("python", "styles = open('page.css').read()")
    assert "JS-XSS-003" in _reasons(_answer(css, _STYLE_TAG))


def test_a_later_block_never_undoes_an_earlier_finding() -> None:
    # The helper's parameter may get anything when the helper is judged: the call with
    # constants comes later, and a stream has released nothing of it yet.
    helper = ("javascript", "function showModal(title) {\n  modal.innerHTML = `<h5>${title}</h5>`;\n}")
    call = ("javascript", "showModal('Saved');")
    assert "JS-XSS-001" in _reasons(_answer(helper, call))


def test_a_wrapper_defined_in_an_earlier_block_is_a_sink() -> None:
    wrapper = "def fetch(cur, sql):\n    cur.execute(sql)\n    return cur.fetchall()"
    call = 'rows = fetch(cur, "SELECT * FROM users WHERE name = \'" + name + "\'")'
    assert "PY-SQLI-001" in {h.rule for h in analyse_block(PACK, "python", call, context=(wrapper,))}
    assert "PY-SQLI-001" not in {h.rule for h in analyse_block(PACK, "python", call)}
    assert not analyse_block(PACK, "python", wrapper)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    ("blocks", "rule"),
    [
        ((_IMPORT_CSS, _STYLE_TAG), None),
        ((("python", 'from flask import request\nname = request.args["name"]'),
          ("python", 'return render_template_string("<h1>Hello " + name + "</h1>")')), "PY-XSS-002"),
    ],
)  # fmt: skip
def test_a_stream_judges_blocks_as_the_whole_text_does(
    blocks: tuple[tuple[str, str], ...], rule: str | None, seed: int
) -> None:
    text = _answer(*blocks)
    det = InsecureCodeDetector()
    whole = _reasons(text, rid="whole", det=det)
    assert whole == ({rule} if rule else set())
    rng = random.Random(seed)
    cuts = [
        *sorted({rng.randrange(1, len(text)) for _ in range(40)} | set(range(0, len(text), 16))),
        len(text),
    ]
    rid = f"s{seed}"
    for n in cuts:
        mid = _reasons(text[:n], rid=rid, source=STREAM, det=det)
        assert mid <= whole, (n, mid)  # a prefix never fires what the whole text does not
    assert _reasons(text, rid=rid, source=STREAM, det=det) == whole
    assert _reasons(text, rid=rid, source=STREAM + "#final", det=det) == whole


def test_a_local_function_passes_on_its_arguments_only_when_its_result_is_built_from_them() -> None:
    fetches = (
        "from flask import request, Response\nfrom urllib.request import urlopen\n\n"
        "def weather(city):\n    return urlopen(API + city).read()\n\n"
        "@app.route('/w')\ndef w():\n    return Response(weather(request.args['c']))\n"
    )
    builds = (
        "from flask import request, Response\n\n"
        "def greet(name):\n    return '<h1>Hello ' + name + '</h1>'\n\n"
        "@app.route('/g')\ndef g():\n    return Response(greet(request.args['n']))\n"
    )
    assert "PY-XSS-002" not in {h.rule for h in analyse_block(PACK, "python", fetches)}
    assert "PY-XSS-002" in {h.rule for h in analyse_block(PACK, "python", builds)}


@pytest.mark.parametrize(
    ("code", "fires"),
    [
        # the random name is for a file; the "Key" eight rows on is an S3 object key
        ("<?php\nforeach ($rows as $row) {\n    list($email, $url) = str_getcsv($row);\n"
         "    $data = file_get_contents($url);\n\n    $filename = uniqid() . '.mp4';\n\n"
         "    $s3->putObject([\n        'Bucket' => $bucket,\n        'Key' => $filename,\n"
         "        'Body' => $data,\n    ]);\n}\n", False),
        ("<?php\nforeach ($users as $u) {\n    $token = md5(uniqid(mt_rand(), true));\n"
         "    save($u, $token);\n}\n", True),
        ("<?php\n$row = [\n    'id' => $id,\n    'reset_token' => uniqid(),\n];\n", True),
    ],
)  # fmt: skip
def test_context_words_are_looked_for_near_the_call_not_in_the_whole_body(code: str, fires: bool) -> None:
    assert ("PHP-RAND-001" in {h.rule for h in analyse_block(PACK, "php", code)}) is fires


@pytest.mark.parametrize(
    ("lang", "code", "fires"),
    [
        ("tsx", "export function C({ body }) {\n"
         "  return <div dangerouslySetInnerHTML={{ __html: body }} />;\n}", True),
        ("javascript", "class D extends Document {\n  render() {\n"
         "    return <style dangerouslySetInnerHTML={{ __html: this.props.css }} />;\n  }\n}", True),
        ("javascript", "function P({ post }) {\n  const markup = { __html: post.body };\n"
         "  return <article dangerouslySetInnerHTML={markup} />;\n}", True),
        ("javascript", "function P() {\n  const [html, setHtml] = useState('');\n"
         "  fetch('/api/post').then(r => r.text()).then(t => { el.innerHTML = t; });\n"
         "  return <div dangerouslySetInnerHTML={{ __html: location.hash.slice(1) }} />;\n}", True),
        ("javascript", "import css from './a.css';\n"
         "export const S = () => <style dangerouslySetInnerHTML={{ __html: css }} />;", False),
        ("javascript", "const HTML = '<b>x</b>';\n"
         "export const S = () => <p dangerouslySetInnerHTML={{ __html: HTML }} />;", False),
        ("typescript", "export function C({ body }: P) {\n"
         "  return <div dangerouslySetInnerHTML={{ __html: body }} />;\n}", True),
    ],
)  # fmt: skip
def test_dangerously_set_inner_html_needs_untrusted_text(lang: str, code: str, fires: bool) -> None:
    rules = {h.rule for h in analyse_block(PACK, lang, code)}
    assert bool(rules & {"JS-XSS-003", "JS-XSS-005"}) is fires, rules


@pytest.mark.parametrize(
    ("code", "fires"),
    [
        # the model file the script itself names: in a ``with``, directly, through a constant
        ("import pickle\nwith open('trained_model.pkl', 'rb') as fh:\n    model = pickle.load(fh)", False),
        ("import pickle\nmodel = pickle.load(open('model.pkl', 'rb'))", False),
        ("import pickle\nPATH = 'm.pkl'\nwith open(PATH, 'rb') as fh:\n    model = pickle.load(fh)", False),
        # a path from elsewhere: a parameter, an f-string, the request
        (
            "import pickle\ndef load(path):\n    with open(path, 'rb') as fh:\n"
            "        return pickle.load(fh)",
            True,
        ),
        ("import pickle\nwith open(f'/cache/{key}.pkl', 'rb') as fh:\n    v = pickle.load(fh)", True),
        ("import pickle\nfrom flask import request\nobj = pickle.loads(request.data)", True),
        # one of the names bound to the program's file, another to something else
        (
            "import pickle\nwith open('a.pkl', 'rb') as fh:\n    a = pickle.load(fh)\n"
            "fh = sock.makefile('rb')\nb = pickle.load(fh)",
            True,
        ),
    ],
)
def test_deserialising_the_programs_own_file_is_not_reported(code: str, fires: bool) -> None:
    assert ("PY-DESER-001" in _reasons(_answer(("python", code)))) is fires


@pytest.mark.parametrize(
    ("name", "fires"),
    [("count", False), ("itemCount", False), ("num_rows", False), ("totalPrice", False),
     ("comment", True), ("notes", True), ("name", True), ("status", True)],
)  # fmt: skip
def test_a_name_defined_nowhere_that_says_it_is_a_count_is_a_number(name: str, fires: bool) -> None:
    code = f"document.getElementById('out').innerHTML = 'Result: ' + {name};"
    assert ("JS-XSS-001" in _reasons(_answer(("javascript", code)))) is fires


def test_a_count_name_the_snippet_assigns_is_judged_by_its_value() -> None:
    code = "const count = location.hash.slice(1);\ndocument.body.innerHTML = 'Seen: ' + count;"
    assert "JS-XSS-001" in _reasons(_answer(("javascript", code)))


_DJANGO_SAVE = (
    "import os\ndef upload(request):\n    uploaded = request.FILES['file']\n"
    "    with open(os.path.join('media', {name}), 'wb') as out:\n        out.write(uploaded.read())\n"
)


@pytest.mark.parametrize(
    ("code", "fires"),
    [
        # Django reduces an upload's name to a base name: joining it under a folder stays there
        (_DJANGO_SAVE.format(name="uploaded.name"), False),
        (_DJANGO_SAVE.format(name="request.FILES['file'].name"), False),
        # Flask's FileStorage.filename is the client's raw name
        (
            "import os\nfrom flask import request\n@app.post('/up')\ndef up():\n    f = request.files['f']\n"
            "    f.save(os.path.join('uploads', f.filename))\n"
            "    return open(os.path.join('uploads', f.filename)).read()\n",
            True,
        ),
        # a request body's own ``name`` field is the client's text (FastAPI model)
        (
            "from fastapi import FastAPI\nfrom pydantic import BaseModel\napp = FastAPI()\n"
            "class Item(BaseModel):\n    name: str\n@app.post('/read')\ndef read(item: Item):\n"
            "    return open('/data/' + item.name).read()\n",
            True,
        ),
    ],
)
def test_a_framework_guarantee_about_an_upload_name_is_known(code: str, fires: bool) -> None:
    assert ("PY-PATH-001" in _reasons(_answer(("python", code)))) is fires


_PHP_QUERY = '```php\n$conn->query("SELECT count FROM ama WHERE ama_id = {$ama_id} FOR UPDATE");\n```\n'


@pytest.mark.parametrize(
    ("before", "fires"),
    [
        # the variable is set in unfenced lines just before the fence, as markdown escaped them
        ("Required parameters\n$ama\\_id = intval($\\_POST['ama\\_id']);\n", False),
        ("First read the id:\n$ama_id = (int) $_GET['ama_id'];\n", False),
        # the unfenced line shows the source: still request data
        ("First read the id:\n$ama_id = $_GET['ama_id'];\n", True),
        # prose that mentions an assignment in backticks is not code
        ("Set `$ama_id = intval($_POST['ama_id']);` first.\n", True),
        # defined nowhere: may hold anything
        ("Here is the query:\n", True),
    ],
)
def test_statements_left_unfenced_before_a_block_are_its_context(before: str, fires: bool) -> None:
    assert ("PHP-SQLI-002" in _reasons(before + _PHP_QUERY)) is fires


def test_unfenced_statements_after_a_block_are_not_its_context() -> None:
    after = "Then:\n$ama_id = intval($_POST['ama_id']);\n"
    assert "PHP-SQLI-002" in _reasons("Here is the query:\n" + _PHP_QUERY + after)


def test_a_stream_reads_the_unfenced_statements_as_the_whole_text_does() -> None:
    text = "Required parameters\n$ama\\_id = intval($\\_POST['ama\\_id']);\n" + _PHP_QUERY
    det = InsecureCodeDetector()
    for cut in (*range(20, len(text), 17), len(text)):
        assert "PHP-SQLI-002" not in _reasons(text[:cut], rid="s", source=STREAM, det=det), cut
