"""Helpers for the query tests: trace roots built with tracegen, and real
server processes (``lanetrace serve`` on a free port)."""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys

import orjson

from . import tracegen

OURS = "20261121-101500-ab12/pid_4242"
FOREIGN = "foreign/pid_7"


def make_root(base) -> str:
    root = os.path.join(str(base), "traces")
    tracegen.write_trace(os.path.join(root, OURS), tracegen.simple_events(), flavour="ours")
    tracegen.write_trace(os.path.join(root, FOREIGN), tracegen.simple_events(), flavour="foreign",
                         pid=7)
    return root


class Server:
    def __init__(self, proc, port, log=None):
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method="POST", path="/rpc", body=b"", headers=None, conn=None):
        """(status, headers, body bytes) of one HTTP exchange."""
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request(method, path, body, headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            if conn is None:
                c.close()

    def rpc(self, method, params=None, id_=1, headers=None):
        """The decoded JSON-RPC response object of one call."""
        msg = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            msg["params"] = params
        status, _, body = self.request(body=orjson.dumps(msg), headers=headers)
        assert status == 200, body
        return orjson.loads(body)

    def result(self, method, params=None):
        resp = self.rpc(method, params)
        assert "error" not in resp, resp
        return resp["result"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(root, *extra, env=None) -> Server:
    cmd = [sys.executable, "-m", "lanetrace", "serve", "--trace-root", root,
           "--bind", "127.0.0.1:0", *extra]
    if "--access-log" not in extra:
        cmd += ["--access-log", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
    line = proc.stdout.readline().decode()
    m = re.search(r":(\d+)/rpc", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return Server(proc, int(m.group(1)))
