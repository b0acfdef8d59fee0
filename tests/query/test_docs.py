"""docs/api.md's examples are real: every ``<!-- example: name -->`` request
is sent to a server over the conftest trace root, and the documented response
must be what the server answers (``executionTimeMs`` and cursors aside).

Regenerate the documented responses after a deliberate change with
    cd tests && ../.venv/bin/python -m query.test_docs --write
"""
import json
import os
import re
import sys
import tempfile

import pytest

from .qhelpers import make_root, start_server

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "api.md")
PAT = re.compile(r"<!-- example: (\S+) -->\n```json\n(.*?)```\n```(json|text)\n(.*?)```", re.S)
CURSOR_REF = re.compile(r'"<nextCursor of ([\w.-]+)>"')


def _normalize(obj):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "executionTimeMs":
                v = 0.1
            elif k == "nextCursor":
                v = "<cursor>"
            else:
                v = _normalize(v)
            out[k] = v
        return out
    if isinstance(obj, list):
        return [_normalize(x) for x in obj]
    return obj


def _run_examples(server, text):
    """[(name, request text, documented response, actual response text)]"""
    cursors, out = {}, []
    for m in PAT.finditer(text):
        name, req_text, kind, documented = m.group(1), m.group(2), m.group(3), m.group(4)
        body = CURSOR_REF.sub(lambda r: json.dumps(cursors[r.group(1)]), req_text)
        status, _, raw = server.request(body=body.encode())
        if status == 204:
            actual = "HTTP 204 No Content (no body)\n"
        else:
            assert status == 200, (name, status, raw)
            msg = json.loads(raw)
            if isinstance(msg, dict) and isinstance(msg.get("result"), dict):
                cur = msg["result"].get("metadata", {}).get("nextCursor")
                if cur:
                    cursors[name] = cur
            actual = json.dumps(_normalize(msg), indent=2) + "\n"
        out.append((name, m, kind, documented, actual))
    return out


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory):
    s = start_server(make_root(tmp_path_factory.mktemp("docs")))
    yield s
    s.stop()


def test_api_doc__every_example__then_server_answers_as_documented(doc_server):
    text = open(DOC).read()
    results = _run_examples(doc_server, text)
    assert len(results) >= 12
    for name, _, kind, documented, actual in results:
        if kind == "text":
            assert documented == actual, name
        else:
            assert json.loads(documented) == json.loads(actual), name


def _write():
    with tempfile.TemporaryDirectory() as tmp:
        s = start_server(make_root(tmp))
        try:
            text = open(DOC).read()
            parts, last = [], 0
            for name, m, _, _, actual in _run_examples(s, text):
                kind = "text" if actual.startswith("HTTP ") else "json"
                parts.append(text[last:m.start()])
                parts.append(f"<!-- example: {name} -->\n```json\n{m.group(2)}```\n```{kind}\n{actual}```")
                last = m.end()
            parts.append(text[last:])
            open(DOC, "w").write("".join(parts))
        finally:
            s.stop()


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
