"""A realistic query mix against a served trace root (see loadtests/README.md).

Each simulated user discovers the traces (trace.list), looks one up
(trace.info, threads.list, functions.list) and then browses it the way the
CLI and a UI do: first pages, cursor paging several pages deep, pages
filtered by function, thread, type and time window, span searches by
duration, and the occasional batch. Any JSON-RPC error counts as a failure.

    LANETRACE_TOKEN=...   bearer token, if the server wants one
    LT_TRACE_ID=...       pin one trace instead of picking among trace.list
"""
from __future__ import annotations

import itertools
import os
import random

from locust import HttpUser, between, task

_ids = itertools.count(1)


class TraceBrowser(HttpUser):
    wait_time = between(0.0, 0.05)

    def rpc(self, method, params, name=None):
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": next(_ids)}
        with self.client.post("/rpc", json=body, headers=self.headers, name=name or method,
                              catch_response=True) as r:
            try:
                msg = r.json()
            except ValueError:
                r.failure(f"HTTP {r.status_code}: not JSON")
                return None
            if isinstance(msg, dict) and "error" in msg:
                r.failure(f"{msg['error'].get('code')}: {msg['error'].get('data')}")
                return None
            r.success()
            return msg if isinstance(msg, list) else msg.get("result")

    def on_start(self):
        token = os.environ.get("LANETRACE_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        pinned = os.environ.get("LT_TRACE_ID")
        traces = [pinned] if pinned else [t["traceId"] for t in
                                          (self.rpc("trace.list", {}) or {}).get("traces", [])]
        if not traces:
            raise RuntimeError("no traces under the server's root")
        self.trace = random.choice(traces)
        info = self.rpc("trace.info", {"traceId": self.trace})
        self.t0, self.t1 = info["timeStartNs"], info["timeEndNs"]
        self.threads = [t["threadId"] for t in self.rpc("threads.list", {"traceId": self.trace})["threads"]]
        self.functions = [f["functionName"] for f in
                          self.rpc("functions.list", {"traceId": self.trace, "limit": 50})["functions"]
                          if f["functionName"]]

    def _window(self, fraction):
        span = max(1, self.t1 - self.t0)
        start = self.t0 + int(random.random() * span * (1 - fraction))
        return start, start + max(1, int(span * fraction))

    @task(5)
    def info(self):
        self.rpc("trace.info", {"traceId": self.trace})

    @task(3)
    def first_page(self):
        self.rpc("events.get", {"traceId": self.trace, "limit": 100,
                                "projection": {"functionName": True}}, "events.get first page")

    @task(2)
    def cursor_paging(self):
        params = {"traceId": self.trace, "limit": 500, "offset": random.randrange(0, 1_000_000)}
        for _ in range(5):
            r = self.rpc("events.get", params, "events.get cursor page")
            if not r or not r["metadata"].get("nextCursor"):
                return
            params = {"traceId": self.trace, "limit": 500, "cursor": r["metadata"]["nextCursor"]}

    @task(3)
    def by_function(self):
        if self.functions:
            self.rpc("events.get", {"traceId": self.trace, "limit": 200,
                                    "filters": {"functionNames": [random.choice(self.functions)]},
                                    "offset": random.randrange(0, 2000)}, "events.get by function")

    @task(2)
    def by_thread_and_type(self):
        self.rpc("events.get", {"traceId": self.trace, "limit": 200,
                                "filters": {"threadIds": [random.choice(self.threads)],
                                            "eventTypes": ["functionCall"]},
                                "orderBy": random.choice(["timestamp", "threadId"]),
                                "ascending": random.random() < 0.7}, "events.get by thread+type")

    @task(3)
    def by_time(self):
        a, b = self._window(0.001)
        self.rpc("events.get", {"traceId": self.trace, "filters": {"timeStartNs": a, "timeEndNs": b},
                                "limit": 1000}, "events.get by time")

    @task(2)
    def slow_spans(self):
        self.rpc("spans.list", {"traceId": self.trace, "filters": {"minDurationNs": 5_000},
                                "limit": 100, "projection": {"threadId": True, "depth": True}},
                 "spans.list min duration")

    @task(2)
    def spans_in_window(self):
        a, b = self._window(0.01)
        self.rpc("spans.list", {"traceId": self.trace, "filters": {"timeStartNs": a, "timeEndNs": b},
                                "includeChildren": random.random() < 0.5, "limit": 200},
                 "spans.list window")

    @task(1)
    def top_functions(self):
        self.rpc("functions.list", {"traceId": self.trace,
                                    "orderBy": random.choice(["calls", "totalTimeNs", "selfTimeNs"]),
                                    "limit": 20})

    @task(1)
    def batch(self):
        body = [{"jsonrpc": "2.0", "method": "trace.info", "params": {"traceId": self.trace}, "id": 1},
                {"jsonrpc": "2.0", "method": "threads.list", "params": {"traceId": self.trace}, "id": 2},
                {"jsonrpc": "2.0", "method": "spans.list", "params": {"traceId": self.trace, "limit": 10},
                 "id": 3}]
        with self.client.post("/rpc", json=body, headers=self.headers, name="batch(3)",
                              catch_response=True) as r:
            msgs = r.json() if r.status_code == 200 else None
            if not isinstance(msgs, list) or any("error" in m for m in msgs):
                r.failure(f"bad batch answer: HTTP {r.status_code}")
            else:
                r.success()
