"""proto/datachannel.proto and proto/bus.proto are the contracts between the
processes: every message and field says in one comment line what it is, the
request kinds and topics are exactly those the services use, the writer reads
no header field the schema does not declare, and docs/internals.md shows
their tables as rendered from them."""
import ast
import inspect

import pytest

import protodoc
from lanetrace.core import bus
from lanetrace.writer import service


@pytest.fixture(scope="module")
def contracts():
    return {name: protodoc.messages(protodoc.load(name)) for name in protodoc.CONTRACTS}


def test_contracts__every_message_and_field__then_one_comment_line(contracts):
    missing = [f"{name}: {m['name']}.{f['name'] if f else ''}"
               for name, msgs in contracts.items() for m in msgs
               for f in [None] + m["fields"]
               if len(((f or m)["comment"]).splitlines()) != 1]
    assert missing == [], "messages or fields without exactly one comment line"


def test_datachannel_proto__request_kinds__then_exactly_the_writers_kinds(contracts):
    kinds = {m["role"] for m in contracts["datachannel.proto"] if m["role"]}
    assert kinds == set(service.KINDS)


def test_bus_proto__topics__then_exactly_the_topics_the_services_use(contracts):
    topics = {m["role"] for m in contracts["bus.proto"] if m["role"]}
    assert topics == set(bus.TOPICS)


def _fields_read(method) -> set[str]:
    """Header keys a writer request handler reads with field(h, KEY, ...)."""
    tree = ast.parse(inspect.getsource(method).strip().replace("\n    ", "\n"))
    return {call.args[1].value for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "field"
            and isinstance(call.args[0], ast.Name) and call.args[0].id == "h"
            and isinstance(call.args[1], ast.Constant)}


def test_writer__header_fields_it_reads__then_each_is_declared_in_its_message(contracts):
    by_kind = {m["role"]: {f["name"] for f in m["fields"]}
               for m in contracts["datachannel.proto"] if m["role"]}
    undeclared = {}
    for kind in service.KINDS:
        handler = getattr(service.Writer, f"on_{kind}", None)
        if handler is None:
            continue
        extra = _fields_read(handler) - by_kind[kind]
        if extra:
            undeclared[kind] = sorted(extra)
    assert undeclared == {}


def test_internals_doc__contract_tables__then_rendered_from_the_protos():
    with open(protodoc.INTERNALS) as f:
        text = f.read()
    assert "<!-- proto-table: datachannel -->" in text and "<!-- proto-table: bus -->" in text
    assert text == protodoc.render(text), \
        "docs/internals.md is stale: .venv/bin/python tests/proto/protodoc.py"
