"""Reading the documentation set (docs/*.md) the way the doc tests need it,
and running its example commands in a shell like a user's.

The convention, also explained to readers in docs/index.md ("How these pages
stay true"):

* Every fenced block opened with ```` ```console ```` is executed. In it, a
  line that starts with ``$ `` is a command; a command whose line ends with
  ``\\`` continues on the next line. Every other line is sample output.
* The commands of one page run in order, in ONE bash shell (so ``cd``,
  variables, ``$!`` and background jobs carry over from one command to the
  next, as in a terminal), in a fresh directory holding ``examples`` (a link to
  the repository's example programs), with ``.venv/bin`` first on ``PATH``.
  Each command must exit 0 (or the status the block declares, below) within
  ``COMMAND_TIMEOUT_S``.
* Sample output is checked loosely: every sample line that has no digit in it
  (digits are pids, times, counts: they change every run), is not ``...``, and
  is not a placeholder line must occur in what the command printed (stdout and
  stderr, whitespace-normalised). Lines with digits are illustration only.
* Placeholders in commands are filled from what earlier commands of the same
  page produced under ``./traces`` (in the order the traces appeared):
  ``<traceId>`` the newest trace (``<session>/pid_<pid>``),
  ``<previousTraceId>`` the one before it, ``<traceDir>`` ``traces/<traceId>``,
  ``<sessionId>`` the newest trace's session, ``<pid>`` its pid.
* The query server's port ``9090`` in a command is replaced by a free port, so
  a server already running on the machine never answers a test.
* An HTML comment right before a block changes how it is run:
  ``<!-- doc-test: skip (reason) -->`` does not run it (the reason is
  mandatory and shown in the test report); ``<!-- doc-test: exit-status N -->``
  expects every command of the block to exit with N.
* When the page is done, the shell's background jobs are stopped (TERM, then
  KILL after a grace period), the shell's process group is killed, and a
  supervisord still running from a run directory inside the page's directory
  (a daemon the page did not stop because it failed first) gets SIGTERM.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs")
VENV_BIN = os.path.join(REPO, ".venv", "bin")
COMMAND_TIMEOUT_S = 120.0
DEFAULT_PORT = "9090"
# what a page's directory holds: links to these directories of the repository
LINKED = ("examples", "loadtests")

DIRECTIVE_RE = re.compile(r"^<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>[\w+-]*)")
PLACEHOLDER_RE = re.compile(r"<(traceId|previousTraceId|traceDir|sessionId|pid)>")


@dataclass
class Block:
    path: str
    line: int  # 1-based line of the opening fence
    info: str  # language tag of the fence
    lines: list[str]
    directives: list[str] = field(default_factory=list)

    @property
    def skip_reason(self) -> str | None:
        for d in self.directives:
            m = re.fullmatch(r"skip\s*(?:\((?P<reason>.*)\))?", d)
            if m:
                return (m["reason"] or "").strip()
        return None

    @property
    def exit_status(self) -> int:
        for d in self.directives:
            m = re.fullmatch(r"exit-status\s+(?P<n>\d+)", d)
            if m:
                return int(m["n"])
        return 0

    def commands(self) -> list["Command"]:
        """The block's commands, each with the sample output that follows it."""
        out: list[Command] = []
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            if line.startswith("$ "):
                text = line[2:]
                lineno = self.line + 1 + i
                while text.endswith("\\") and i + 1 < len(self.lines):
                    i += 1
                    text = text[:-1] + "\n" + self.lines[i]
                out.append(Command(text=text, line=lineno, exit_status=self.exit_status))
            elif out:
                out[-1].sample.append(line)
            i += 1
        return out


@dataclass
class Command:
    text: str
    line: int
    exit_status: int = 0
    sample: list[str] = field(default_factory=list)

    def checked_sample_lines(self) -> list[str]:
        checked = []
        for line in self.sample:
            norm = " ".join(line.split())
            if not norm or norm in ("...", "…") or re.search(r"\d", norm):
                continue
            if PLACEHOLDER_RE.search(norm) or re.search(r"<[A-Za-z]+>", norm):
                continue
            checked.append(norm)
        return checked


def doc_files() -> list[str]:
    return sorted(os.path.join(DOCS, n) for n in os.listdir(DOCS) if n.endswith(".md"))


def parse_blocks(path: str) -> list[Block]:
    """Every fenced block of a Markdown file, with the doc-test directives
    (HTML comments) found right before it (blank lines allowed between)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks: list[Block] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE_RE.match(line)
        if m:
            fence = m["fence"]
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            blocks.append(Block(path, start + 1, m["info"], body, pending))
            pending = []
        else:
            d = DIRECTIVE_RE.match(line.strip())
            if d:
                pending.append(d["body"])
            elif line.strip():
                pending = []
        i += 1
    return blocks


def console_blocks(path: str) -> list[Block]:
    return [b for b in parse_blocks(path) if b.info == "console"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    command: str
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class CommandTimeout(Exception):
    pass


class DocShell:
    """One bash per page, fed one command at a time on its stdin. The shell's
    stdout and stderr are pipes (like a terminal, and unlike a file they can be
    reopened through /dev/stdout without clobbering anything), read by two
    threads; after each command the shell prints a marker with the status on
    both, which splits the streams into per-command output."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.n = 0
        self.port = str(free_port())
        self.traces: list[str] = []  # trace ids in the order they appeared
        for name in LINKED:
            os.symlink(os.path.join(REPO, name), os.path.join(workdir, name))
        env = dict(os.environ)
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = os.path.join(REPO, ".venv")
        for var in ("LANETRACE_SERVER", "LANETRACE_TOKEN", "LANETRACE_RUN_DIR"):
            env.pop(var, None)
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, cwd=workdir, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self._cond = threading.Condition()
        self._buf = {"out": bytearray(), "err": bytearray()}
        self._eof = {"out": False, "err": False}
        for key, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(key, stream), daemon=True).start()

    def _pump(self, key, stream) -> None:
        while True:
            chunk = stream.read1(65536)
            with self._cond:
                if not chunk:
                    self._eof[key] = True
                    self._cond.notify_all()
                    return
                self._buf[key] += chunk
                self._cond.notify_all()

    # -- placeholders ----------------------------------------------------------
    def scan_traces(self) -> None:
        root = os.path.join(self.workdir, "traces")
        if not os.path.isdir(root):
            return
        found = []
        for session in os.listdir(root):
            sdir = os.path.join(root, session)
            if not os.path.isdir(sdir):
                continue
            for name in os.listdir(sdir):
                if name.startswith("pid_") and os.path.exists(os.path.join(sdir, name, "trace.json")):
                    tid = f"{session}/{name}"
                    if tid not in self.traces:
                        found.append((os.path.getmtime(sdir), session, int(name[4:]), tid))
        self.traces.extend(t[-1] for t in sorted(found))

    def substitute(self, text: str) -> str:
        def value(name: str) -> str:
            need = 2 if name == "previousTraceId" else 1
            if len(self.traces) < need:
                raise AssertionError(f"<{name}> used before {need} trace(s) were written "
                                     f"under ./traces by earlier commands of this page")
            latest = self.traces[-1]
            return {
                "traceId": latest,
                "previousTraceId": self.traces[-2] if len(self.traces) > 1 else "",
                "traceDir": f"traces/{latest}",
                "sessionId": latest.split("/")[0],
                "pid": latest.split("/pid_")[1],
            }[name]

        text = PLACEHOLDER_RE.sub(lambda m: value(m[1]), text)
        return re.sub(rf"(?<=:){DEFAULT_PORT}\b", self.port, text)

    # -- running ---------------------------------------------------------------
    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        self.n += 1
        marker = f"__lanetrace_doc_test_{os.getpid()}_{self.n}__"
        script = (f"{{\n{command}\n}} < /dev/null\n"
                  f"__st=$?; printf '\\n{marker} %d\\n' $__st; printf '\\n{marker}\\n' >&2\n")
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        pat = {"out": re.compile(rb"\n" + marker.encode() + rb" (\d+)\n"),
               "err": re.compile(rb"\n" + marker.encode() + rb"\n")}
        deadline = time.monotonic() + timeout
        found = {}
        with self._cond:
            while len(found) < 2:
                for key in ("out", "err"):
                    if key not in found:
                        m = pat[key].search(self._buf[key])
                        if m:
                            found[key] = m
                if len(found) == 2:
                    break
                if all(self._eof.values()) or self.proc.poll() is not None:
                    raise AssertionError(f"the shell exited while running: {command}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommandTimeout(f"no exit within {timeout:.0f}s: {command}")
                self._cond.wait(min(left, 0.5))
            status = int(found["out"][1])
            out = bytes(self._buf["out"][:found["out"].start()])
            err = bytes(self._buf["err"][:found["err"].start()])
            del self._buf["out"][:found["out"].end()]
            del self._buf["err"][:found["err"].end()]
        self.scan_traces()
        return Result(command, status, out.decode(errors="replace"),
                      err.decode(errors="replace"))

    def close(self) -> None:
        """Stop the page's background jobs, then the shell's process group."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"for p in $(jobs -p); do kill -TERM $p 2>/dev/null; done\n"
                                      b"sleep 1\n"
                                      b"for p in $(jobs -p); do kill -KILL $p 2>/dev/null; done\n"
                                      b"exit 0\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait()
        self._stop_leftover_supervisords()

    def _stop_leftover_supervisords(self) -> None:
        """A page that failed before `lanetrace daemon stop` leaves the daemon's
        supervisord running (it daemonizes, out of the shell's process group):
        SIGTERM it by the pid it recorded in a run directory under the page's
        directory, which makes it stop its programs."""
        for dirpath, _dirs, files in os.walk(self.workdir):
            if dirpath.count(os.sep) - self.workdir.count(os.sep) > 2:
                continue
            if "supervisord.pid" in files:
                try:
                    with open(os.path.join(dirpath, "supervisord.pid")) as f:
                        pid = int(f.read().strip())
                    # only if that pid is still this run directory's supervisord
                    # (a stale pid file may name an unrelated process by now)
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read().decode(errors="replace")
                    if "supervisord" in cmdline and dirpath in cmdline:
                        os.kill(pid, signal.SIGTERM)
                except (OSError, ValueError):
                    pass


def markdown_tables(path: str) -> list[tuple[str, list[list[str]]]]:
    """(heading, rows) for every pipe table of a Markdown file; each row a list
    of cell texts, header and separator rows dropped. ``heading`` is the text
    of the nearest heading above the table."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    tables = []
    heading = ""
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if FENCE_RE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif not in_fence and line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(cells)
                i += 1
            if len(rows) >= 2 and set("".join(rows[1])) <= set("-: "):
                rows = rows[2:]
            tables.append((heading, rows))
            continue
        i += 1
    return tables


def code_names(cell: str) -> list[str]:
    """The `backticked` names in a table cell."""
    return re.findall(r"`([^`]+)`", cell)
