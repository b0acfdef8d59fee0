"""DWARF file:line of the hooked functions, found off the hook path.

Parsing a module's DWARF takes seconds to tens of seconds for a system
library whose debug file is installed (libc6-dbg: ~15 s of CPU), so it must
not stand between an attach and live hooks. Functions are published to the
writer without locations; a worker process parses each module once, and the
entries that gained a location are published again (the writer appends a
SymbolDefinition for every changed id, and the last one wins). The injector
waits for a target's lookups before it ends that target's trace, so the
finished trace has every location the DWARF holds.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait

import orjson

log = logging.getLogger("lanetrace.injector.srclocator")


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lanetrace", "source-locations")


def _cache_file(path: str) -> str:
    """Where the locations of the module at path are cached, keyed by its
    real path, size and mtime: a library is parsed once per version, not
    once per trace. Raises OSError when path cannot be read."""
    st = os.stat(path)
    real = os.path.realpath(path)
    key = hashlib.sha256(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), key + ".json")


def cached_locations(path: str) -> dict | None:
    """The cached table of a module, or None when it must be parsed."""
    try:
        with open(_cache_file(path), "rb") as f:
            return orjson.loads(f.read())["functions"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _module_locations(path: str) -> dict:
    """In the worker process: name -> [file, line]; {"__error__": why} for a
    module we cannot parse (it keeps its names). Kept in the user's cache."""
    from lanetrace.export.dwarf import DwarfError, source_locations
    try:
        cached = _cache_file(path)
    except OSError as exc:
        return {"__error__": str(exc)}
    table = cached_locations(path)
    if table is not None:
        return table
    try:
        table = source_locations(path)
    except (DwarfError, OSError) as exc:
        return {"__error__": str(exc)}
    try:
        os.makedirs(cache_dir(), mode=0o700, exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"module": os.path.realpath(path), "functions": table}))
        os.replace(tmp, cached)
    except OSError as exc:  # an unwritable cache only costs time
        log.info("cannot cache source locations of %s: %s", path, exc)
    return table


class SourceLocator:
    def __init__(self, make_writer):
        """``make_writer()`` returns a WriterClient for the publishing thread
        (a ZeroMQ socket must stay on the thread that made it)."""
        self._make_writer = make_writer
        self._writer = None
        self._lock = threading.Lock()
        self._modules: dict[str, Future] = {}
        self._jobs: dict[int, list[Future]] = {}
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="srclocator")
        self._parser: ProcessPoolExecutor | None = None

    def _parse(self, path: str) -> Future:
        with self._lock:
            if path not in self._modules:
                table = cached_locations(path)
                if table is not None:
                    # no worker process for what an earlier trace parsed
                    self._modules[path] = Future()
                    self._modules[path].set_result(table)
                    return self._modules[path]
                if self._parser is None:
                    # spawn, not fork: the injector has Frida's threads
                    self._parser = ProcessPoolExecutor(
                        1, mp_context=multiprocessing.get_context("spawn"))
                self._modules[path] = self._parser.submit(_module_locations, path)
            return self._modules[path]

    def locate(self, pid: int, functions: list[dict]) -> None:
        """Find the locations of ``functions`` (already published) and
        publish those that have one."""
        paths = {fn.get("modulePath") for fn in functions if fn.get("modulePath")}
        if not paths:
            return
        parsed = {path: self._parse(path) for path in paths}
        job = self._publisher.submit(self._publish, pid, functions, parsed)
        with self._lock:
            self._jobs.setdefault(pid, []).append(job)

    def _publish(self, pid: int, functions: list[dict], parsed: dict[str, Future]) -> int:
        changed = []
        for path, future in parsed.items():
            table = future.result()
            if "__error__" in table:
                log.info("no source locations for %s: %s", path, table["__error__"])
                continue
            for fn in functions:
                loc = table.get(fn["name"]) if fn.get("modulePath") == path else None
                if loc:
                    changed.append(dict(fn, sourceFile=loc[0], sourceLine=int(loc[1])))
        if changed:
            if self._writer is None:
                self._writer = self._make_writer()
            self._writer.request("functions", {"pid": pid, "functions": changed})
        return len(changed)

    def wait(self, pid: int, timeout_s: float) -> str:
        """Wait for pid's lookups; returns '' or what went wrong."""
        with self._lock:
            jobs = self._jobs.pop(pid, [])
        if not jobs:
            return ""
        done, not_done = wait(jobs, timeout=timeout_s)
        if not_done:
            return f"source locations not resolved within {timeout_s:.0f}s"
        for job in done:
            exc = job.exception()
            if exc is not None:
                log.error("pid %d: publishing source locations failed: %s", pid, exc)
                return f"source locations not published: {exc}"
        return ""

    def close(self) -> None:
        self._publisher.shutdown(wait=False, cancel_futures=True)
        if self._parser is not None:
            self._parser.shutdown(wait=False, cancel_futures=True)
