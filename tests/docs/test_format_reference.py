"""docs/format.md documents the real format: every field of
proto/atf_v4.proto (read with protoc, so the check follows the schema, not
a stale generated module), every key of the JSON files of a trace recorded
for the test, and its Python reading example runs."""
import os
import re
import shutil
import subprocess
import sys

import orjson
import pytest

from docs_harness import DOCS, REPO, code_names, markdown_tables, parse_blocks

FORMAT_MD = os.path.join(DOCS, "format.md")
TROUBLESHOOTING_MD = os.path.join(DOCS, "troubleshooting.md")
PROTO = os.path.join(REPO, "proto", "atf_v4.proto")

# Objects whose keys are data (reasons, names), not fields: only the object
# itself is documented; drop reasons have their own table in troubleshooting.
MAP_KEYS = {
    "trace.json": {"drops", "flightRecorder.config", "flightRecorder.drainers",
                   "hooks.skippedByReason", "hooks.fallbackByReason"},
    # the same object as trace.json's hooks, documented there
    "session.json": {"targets[].crash", "targets[].hooks"},
    "symbols.json": set(),
}


def proto_fields() -> dict[str, list[tuple[str, int]]]:
    """message (or enum) name -> [(field or value name, number)], from protoc."""
    from google.protobuf import descriptor_pb2

    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.fail("protoc is missing (Debian package protobuf-compiler; `make test` installs it)")
    out = subprocess.run([protoc, "-I", os.path.dirname(PROTO), "--descriptor_set_out=/dev/stdout",
                          PROTO], capture_output=True, check=True).stdout
    fds = descriptor_pb2.FileDescriptorSet.FromString(out)
    found = {}

    def walk(msg, prefix=""):
        name = prefix + msg.name
        found[name] = [(f.name, f.number) for f in msg.field]
        for nested in msg.nested_type:
            if not nested.options.map_entry:
                walk(nested, name + ".")
        for enum in msg.enum_type:
            found[name + "." + enum.name] = [(v.name, v.number) for v in enum.value]

    for f in fds.file:
        for msg in f.message_type:
            walk(msg)
        for enum in f.enum_type:
            found[enum.name] = [(v.name, v.number) for v in enum.value]
    return found


def documented_rows(path: str) -> dict[str, dict[str, list[str]]]:
    """heading's first `name` -> {first `name` of a row: the row's cells}."""
    out: dict[str, dict[str, list[str]]] = {}
    for heading, rows in markdown_tables(path):
        names = code_names(heading)
        key = names[0] if names else heading
        table = out.setdefault(key, {})
        for row in rows:
            cell_names = code_names(row[0]) if row else []
            if cell_names:
                table[cell_names[0]] = row
    return out


def test_format_reference__every_proto_field__then_documented_with_its_number():
    docs = documented_rows(FORMAT_MD)
    problems = []
    for message, fields in proto_fields().items():
        table = docs.get(message)
        if table is None:
            problems.append(f"message {message}: no table under a heading naming `{message}`")
            continue
        for name, number in fields:
            row = table.get(name)
            if row is None:
                problems.append(f"{message}.{name} = {number}: not documented")
            elif len(row) < 2 or row[1].strip() != str(number):
                problems.append(f"{message}.{name}: documented with number {row[1:2]}, schema says {number}")
    assert problems == [], "docs/format.md vs proto/atf_v4.proto:\n" + "\n".join(problems)


def test_format_reference__documented_messages__then_each_exists_in_the_schema():
    """A message removed from the schema must leave the docs too."""
    with open(FORMAT_MD, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## The schema"):]
    section = section[:section.index("\n## ", 1)]
    headings = re.findall(r"^### `([^`]+)`", section, flags=re.M)
    schema = set(proto_fields())
    stale = [h for h in headings if h not in schema and not h.startswith("google.protobuf.")]
    assert stale == [], f"docs/format.md documents messages the schema does not have: {stale}"


# ---- the JSON files of a real trace ----------------------------------------

def flatten(obj, prefix, maps) -> set[str]:
    keys = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else k
            keys.add(path)
            if path not in maps:
                keys |= flatten(v, path, maps)
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                keys |= flatten(item, f"{prefix}[]", maps)
    return keys


def section_keys(title: str) -> set[str]:
    return set(documented_rows(FORMAT_MD).get(title, {}))


@pytest.fixture(scope="module")
def recorded_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmt") / "traces"
    env = dict(os.environ, LANETRACE_EXPECT=str(out.parent / "expect.json"))
    proc = subprocess.run([sys.executable, "-m", "lanetrace", "run", "-o", str(out), "--",
                           os.path.join(REPO, "examples", "bin", "add")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    (session,) = os.listdir(out)
    (pid_dir,) = [d for d in os.listdir(out / session) if d.startswith("pid_")]
    return out / session, out / session / pid_dir


def _load(path):
    with open(path, "rb") as f:
        return orjson.loads(f.read())


@pytest.mark.frida
@pytest.mark.parametrize("name", ["trace.json", "symbols.json", "session.json"])
def test_format_reference__keys_of_a_recorded_trace__then_each_documented(recorded_trace, name):
    session_dir, trace_dir = recorded_trace
    data = _load((session_dir if name == "session.json" else trace_dir) / name)
    keys = flatten(data, "", MAP_KEYS[name])
    undocumented = sorted(keys - section_keys(name))
    assert undocumented == [], f"docs/format.md, section {name}: undocumented keys {undocumented}"


@pytest.mark.frida
def test_format_reference__drop_reasons_of_a_recorded_trace__then_each_explained_in_troubleshooting(
        recorded_trace):
    _, trace_dir = recorded_trace
    reasons = set(_load(trace_dir / "trace.json").get("drops", {}))
    explained = set()
    for _, rows in markdown_tables(TROUBLESHOOTING_MD):
        for row in rows:
            explained.update(code_names(row[0]) if row else [])
    assert sorted(reasons - explained) == []


@pytest.mark.frida
def test_format_reference__python_reading_example__then_counts_the_calls_of_a_real_trace(
        recorded_trace, capsys):
    _, trace_dir = recorded_trace
    blocks = [b for b in parse_blocks(FORMAT_MD) if b.info == "python"]
    assert blocks, "docs/format.md lost its Python reading example"
    for block in blocks:
        exec(compile("\n".join(block.lines), f"{FORMAT_MD}:{block.line}", "exec"),
             {"trace_dir": str(trace_dir)})
    printed = capsys.readouterr().out
    calls = _load(trace_dir / "trace.json")["callCount"]
    assert f"{calls} calls" in printed
