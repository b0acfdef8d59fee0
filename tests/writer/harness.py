"""Test harness for the writer: the real ``python -m lanetrace.writer``
process, a real DEALER client, raw records built with numpy, and decoding with
the official protobuf runtime."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys

import numpy as np
import orjson
import zmq

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb

SESSION = "20260101-000000-abcd"
REPLY_TIMEOUT_MS = 30_000  # a hang guard, not a performance assertion

RECORD = np.dtype([("ts_ns", "<u8"), ("seq", "<u8"), ("tid", "<u4"), ("func_id", "<u4"),
                   ("kind", "<u2"), ("depth", "<u2"), ("flags", "<u4")])
ENTRY, RETURN, UNWOUND = 1, 2, 3


def records(rows) -> bytes:
    """rows: (ts_ns, seq, tid, func_id, kind, depth) tuples → payload bytes."""
    arr = np.zeros(len(rows), RECORD)
    for i, (ts, seq, tid, fid, kind, depth) in enumerate(rows):
        arr[i] = (ts, seq, tid, fid, kind, depth, 0)
    return arr.tobytes()


def call_pairs(tid: int, first_seq: int, n_pairs: int, func_id: int = 1, ts0: int = 1000):
    """n_pairs call/return pairs of one thread starting at first_seq."""
    rows = []
    for i in range(n_pairs):
        seq = first_seq + 2 * i
        rows.append((ts0 + seq * 10, seq, tid, func_id, ENTRY, 0))
        rows.append((ts0 + seq * 10 + 5, seq + 1, tid, func_id, RETURN, 0))
    return rows


class WriterProcess:
    def __init__(self, tmp_path, inline_symbols=False, extra_args=(), trace_root=None):
        self.run_dir = str(tmp_path / "run")
        self.trace_root = trace_root or str(tmp_path / "traces")
        self.log_path = str(tmp_path / "writer.log")
        self.args = [sys.executable, "-m", "lanetrace.writer", "--run-dir", self.run_dir,
                     "--trace-root", self.trace_root, "--session", SESSION, *extra_args]
        if inline_symbols:
            self.args.append("--inline-symbols")
        self.endpoint = f"ipc://{self.run_dir}/writer.sock"
        self.proc = None
        self.start()

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)
        log.close()

    def trace_dir(self, pid: int) -> str:
        return os.path.join(self.trace_root, SESSION, f"pid_{pid}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Client:
    """A DEALER like the drainers' and injector's."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.n = 0

    def send(self, kind: str, header: dict, payload: bytes | None = None) -> str:
        self.n += 1
        header = dict(header)
        header.setdefault("msgId", f"m{self.n}")
        frames = [kind.encode(), orjson.dumps(header)]
        if payload is not None:
            frames.append(payload)
        self.sock.send_multipart(frames)
        return header["msgId"]

    def recv(self) -> list[bytes]:
        if not self.sock.poll(REPLY_TIMEOUT_MS):
            raise AssertionError("writer did not answer")
        return self.sock.recv_multipart()

    def request(self, kind: str, header: dict, payload: bytes | None = None) -> list[bytes]:
        msg_id = self.send(kind, header, payload)
        reply = self.recv()
        assert reply[1] == str(msg_id).encode(), reply
        return reply

    def ok(self, kind: str, header: dict, payload: bytes | None = None) -> None:
        reply = self.request(kind, header, payload)
        assert reply[0] == b"ack", reply

    def nack(self, kind: str, header: dict, payload: bytes | None = None) -> str:
        reply = self.request(kind, header, payload)
        assert reply[0] == b"nack", reply
        return orjson.loads(reply[2])["error"]

    def raw(self, frames: list[bytes]) -> list[bytes]:
        self.sock.send_multipart(frames)
        return self.recv()

    def close(self):
        self.sock.close(0)
        self.ctx.term()


def start_header(pid: int, **kw) -> dict:
    h = {"pid": pid, "sessionId": SESSION, "executablePath": "/usr/bin/demo",
         "args": ["demo", "--fast"], "attached": False, "startNs": 500}
    h.update(kw)
    return h


def functions_header(pid: int, ids=(1, 2), **extra) -> dict:
    return {"pid": pid, "functions": [
        {"id": i, "name": f"fn_{i}", "module": "libdemo.so" if i % 2 else "demo",
         "address": 0x400000 + 0x100 * i, "size": 0x40, **extra} for i in ids]}


def end_header(pid: int, **kw) -> dict:
    h = {"pid": pid, "exitCode": 3, "signal": 0, "detached": False, "endNs": 10**9,
         "drops": {"ring_full": 2}}
    h.update(kw)
    return h


def read_frames(trace_dir: str) -> list[pb.Event]:
    """Every Event of events.bin, symbol definitions included, in file order,
    decoded with the official runtime (with the fields compact events leave
    out filled in); fails on a torn tail."""
    with open(os.path.join(trace_dir, atf.EVENTS_FILE), "rb") as f:
        data = f.read()
    out, end = [], 0
    derive = atf.Derivation().apply
    for _, pos, length in atf.scan_frames(data):
        ev = pb.Event()
        ev.ParseFromString(data[pos:pos + length])
        derive(ev)
        out.append(ev)
        end = pos + length
    assert end == len(data), f"torn tail: {len(data) - end} bytes after the last frame"
    return out


def calls_and_returns(events):
    return [e for e in events if e.WhichOneof("payload") in ("function_call", "function_return")]


def manifest(trace_dir: str) -> dict:
    return atf.read_manifest(trace_dir)


ENTRY_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9", "rsp")
RETURN_REGS = ("rax", "rdx")


def detail_record(ts: int, seq: int, tid: int, fid: int, kind: int, regs=(),
                  stack: bytes = b"") -> bytes:
    """One lt_detail_record (record.h): 104-byte header with reg_count = the
    number of regs given, then the stack copy zero-padded to 8 bytes."""
    padded = stack + b"\0" * (-len(stack) % 8)
    values = list(regs) + [0] * (8 - len(regs))
    return struct.pack("<QQIIHHI8QII", ts, seq, tid, fid, kind, len(regs), 104 + len(padded),
                       *values, len(stack), 0) + padded
