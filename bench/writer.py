"""Writer throughput: sustained raw index records/s that the real writer
process persists (C encode + write() + ack), fed by DEALER clients in their
own processes the way drainers feed it.

    .venv/bin/python bench/writer.py [--records 10000000] [--batch 8192]
        [--clients 2] [--window 8] [--inline-symbols]

Also prints the encoder alone (in-process, no I/O) as the ceiling.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import orjson
import zmq

RECORD = np.dtype([("ts_ns", "<u8"), ("seq", "<u8"), ("tid", "<u4"), ("func_id", "<u4"),
                   ("kind", "<u2"), ("depth", "<u2"), ("flags", "<u4")])
PID = 4242
FUNCTIONS = 1000
THREADS_PER_CLIENT = 4


def make_batch(client: int, batch_no: int, batch: int) -> bytes:
    """Records of one batch: calls/returns alternating, one thread per batch
    round-robin, seq continuing that thread's numbering."""
    rec = np.zeros(batch, RECORD)
    tid = 1000 + client * THREADS_PER_CLIENT + batch_no % THREADS_PER_CLIENT
    first_seq = (batch_no // THREADS_PER_CLIENT) * batch + 1
    idx = np.arange(batch, dtype=np.uint64)
    rec["seq"] = first_seq + idx
    rec["ts_ns"] = 1_000_000_000 + (first_seq + idx) * 37
    rec["tid"] = tid
    rec["func_id"] = 1 + (idx // 2) % FUNCTIONS
    rec["kind"] = np.where(idx % 2 == 0, 1, 2)
    rec["depth"] = 0
    return rec.tobytes()


def client(endpoint: str, client_no: int, records: int, batch: int, window: int, q) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    batches = [make_batch(client_no, i, batch) for i in range(records // batch)]
    q.put(("ready", client_no))
    pending = 0
    start = time.monotonic()
    for i, payload in enumerate(batches):
        while pending >= window:
            reply = sock.recv_multipart()
            assert reply[0] == b"ack", reply
            pending -= 1
        header = orjson.dumps({"msgId": f"c{client_no}-{i}", "pid": PID, "drainer": client_no,
                               "count": batch})
        sock.send_multipart([b"index", header, payload], copy=False)
        pending += 1
    while pending:
        reply = sock.recv_multipart()
        assert reply[0] == b"ack", reply
        pending -= 1
    q.put(("done", client_no, start, time.monotonic(), len(batches) * batch))
    sock.close()
    ctx.term()


def request(sock, kind: str, header: dict) -> None:
    sock.send_multipart([kind.encode(), orjson.dumps(header)])
    reply = sock.recv_multipart()
    if reply[0] != b"ack":
        raise SystemExit(f"writer refused {kind}: {reply}")


def encoder_only(records: int, batch: int, inline: bool) -> float:
    from lanetrace._native import ffi, lib
    enc = ffi.gc(lib.lt_encoder_new(int(inline)), lib.lt_encoder_free)
    for f in range(1, FUNCTIONS + 1):
        name = f"function_number_{f}".encode()
        lib.lt_encoder_set_function(enc, f, 0x400000 + f * 64, name, len(name))
    batches = [make_batch(0, i, batch) for i in range(max(1, records // batch))]
    cap = lib.lt_encode_bound(enc, batch)
    out = ffi.new("uint8_t[]", cap)
    t0 = time.perf_counter()
    for b in batches:
        lib.lt_encode_index(enc, ffi.from_buffer(b), batch, out, cap, ffi.NULL)
    return len(batches) * batch / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--window", type=int, default=8, help="unacked batches per client")
    ap.add_argument("--inline-symbols", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the trace directory")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="lanetrace-bench-writer-")
    run_dir, root = os.path.join(work, "run"), os.path.join(work, "traces")
    cmd = [sys.executable, "-m", "lanetrace.writer", "--run-dir", run_dir,
           "--trace-root", root, "--session", "bench"]
    if args.inline_symbols:
        cmd.append("--inline-symbols")
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    endpoint = f"ipc://{run_dir}/writer.sock"
    try:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        request(sock, "ping", {"msgId": "p"})
        request(sock, "target_start", {"msgId": "s", "pid": PID, "sessionId": "bench",
                                       "executablePath": "/bench", "args": [],
                                       "attached": False, "startNs": 1})
        request(sock, "functions", {"msgId": "f", "pid": PID, "functions": [
            {"id": f, "name": f"function_number_{f}", "module": "bench",
             "address": 0x400000 + f * 64, "size": 64} for f in range(1, FUNCTIONS + 1)]})

        per_client = args.records // args.clients
        mpctx = mp.get_context("spawn")
        q = mpctx.Queue()
        procs = [mpctx.Process(target=client, args=(endpoint, c, per_client, args.batch,
                                                    args.window, q))
                 for c in range(args.clients)]
        for p in procs:
            p.start()
        cpu0 = cpu_seconds(proc.pid)
        for _ in procs:
            q.get()  # batches prepared: measure sending only
        results = [q.get() for _ in procs]
        cpu = cpu_seconds(proc.pid) - cpu0
        for p in procs:
            p.join()
        start = min(r[2] for r in results)
        end = max(r[3] for r in results)
        sent = sum(r[4] for r in results)
        request(sock, "target_end", {"msgId": "e", "pid": PID, "exitCode": 0, "signal": 0,
                                     "detached": False, "endNs": 2, "drops": {}})
        manifest = orjson.loads(open(os.path.join(root, "bench", f"pid_{PID}", "trace.json"),
                                     "rb").read())
        secs = end - start
        assert manifest["callCount"] + manifest["returnCount"] == sent, manifest
        print(f"writer: {sent:,} records in {secs:.2f} s = {sent / secs / 1e6:.2f} M records/s; "
              f"in {sent * 32 / secs / 1e6:.0f} MB/s raw, out "
              f"{manifest['bytesWritten'] / secs / 1e6:.0f} MB/s ATF "
              f"({manifest['bytesWritten'] / sent:.1f} B/event); clients={args.clients} "
              f"batch={args.batch} window={args.window} inline={args.inline_symbols}")
        print(f"writer process CPU: {cpu:.2f} s = {sent / max(cpu, 1e-9) / 1e6:.1f} M records "
              f"per CPU-second (includes ack + write syscalls)")
        rate = encoder_only(min(args.records, 4_000_000), args.batch, args.inline_symbols)
        print(f"encoder alone (no I/O): {rate / 1e6:.1f} M records/s")
        sock.close()
        ctx.term()
    finally:
        proc.terminate()
        proc.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
