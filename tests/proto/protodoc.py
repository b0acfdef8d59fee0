"""The contracts between processes as proto/*.proto declare them, read with
protoc (comments included), and rendered into the tables of
docs/internals.md.

    python tests/proto/protodoc.py      rewrites those tables in place
"""
import os
import re
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")
INTERNALS = os.path.join(REPO, "docs", "internals.md")
CONTRACTS = ("datachannel.proto", "bus.proto")
# A request, bus message or reply says first what it is: "<kind or topic>, from <sender>: ..."
ROLE = re.compile(r"^(?P<name>[a-z][a-z0-9_.<>-]*), from (?P<sender>[^:]+): (?P<meaning>.+)$")
TYPES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string",
         12: "bytes", 13: "uint32"}


def load(name: str) -> descriptor_pb2.FileDescriptorProto:
    """The file's descriptor with its comments (protoc --include_source_info)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        subprocess.run(["protoc", f"-I{PROTO_DIR}", "-I/usr/include", "--include_source_info",
                        f"--descriptor_set_out={out}", os.path.join(PROTO_DIR, name)],
                       check=True, capture_output=True, text=True)
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    return fds.file[-1]


def comments(fd) -> dict[tuple, str]:
    """Leading comment of each message (4, i) and field (4, i, 2, j)."""
    out = {}
    for loc in fd.source_code_info.location:
        path = tuple(loc.path)
        if len(path) in (2, 4) and path[0] == 4 and (len(path) == 2 or path[2] == 2):
            out[path] = loc.leading_comments.strip()
    return out


def _type(field, fd) -> str:
    if field.type in (11, 14):  # message, enum
        name = field.type_name.rsplit(".", 1)[-1]
        nested = {n.name: n for m in fd.message_type for n in m.nested_type}
        if name in nested and nested[name].options.map_entry:
            k, v = nested[name].field
            return f"map<{_type(k, fd)}, {_type(v, fd)}>"
    base = field.type_name.rsplit(".", 1)[-1] if field.type in (11, 14) else TYPES[field.type]
    return f"{base}[]" if field.label == 3 and not base.startswith("map<") else base


def messages(fd) -> list[dict]:
    """Each message: name, role (kind or topic, if it is one), sender,
    meaning, and its fields (JSON name, type, meaning)."""
    notes = comments(fd)
    out = []
    for i, m in enumerate(fd.message_type):
        text = notes.get((4, i), "")
        role = ROLE.match(text)
        out.append({
            "name": m.name, "comment": text,
            "role": role["name"] if role else None,
            "sender": role["sender"] if role else None,
            "meaning": role["meaning"] if role else text,
            "fields": [{"name": f.json_name, "type": _type(f, fd),
                        "comment": notes.get((4, i, 2, j), "")}
                       for j, f in enumerate(m.field)],
        })
    return out


def table(name: str) -> str:
    rows = ["| message | field | type | meaning |", "|---|---|---|---|"]
    for m in messages(load(name)):
        label = f"`{m['role']}`" if m["role"] else f"*{m['name']}*"
        sender = f"{m['sender']}: " if m["sender"] else ""
        rows.append(f"| {label} | | | {sender}{m['meaning']} |")
        rows += [f"| | `{f['name']}` | {f['type']} | {f['comment']} |" for f in m["fields"]]
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """docs/internals.md with every ``<!-- proto-table: NAME -->`` section
    regenerated from proto/NAME.proto."""
    def fill(m):
        return f"{m[1]}\n{table(m[2] + '.proto')}{m[3]}"
    return re.sub(r"(<!-- proto-table: ([a-z_]+) -->)\n.*?(<!-- /proto-table -->)", fill, text,
                  flags=re.S)


if __name__ == "__main__":
    with open(INTERNALS) as f:
        old = f.read()
    new = render(old)
    with open(INTERNALS, "w") as f:
        f.write(new)
    sys.exit(0)
