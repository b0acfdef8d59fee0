"""Prometheus text exposition of the server's counters (one replica's view;
the replica's pid is a label so that scrapes of a shared port stay apart)."""
from __future__ import annotations

import os
from collections import defaultdict

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.requests = defaultdict(int)          # (method, outcome) -> n
        self.http = defaultdict(int)              # (path, status) -> n
        self.hist = {}                            # method -> [bucket counts..., sum, count]
        self.connections = 0
        self.pid = os.getpid()

    def record(self, method: str, outcome: str, seconds: float) -> None:
        self.requests[(method, outcome)] += 1
        h = self.hist.get(method)
        if h is None:
            h = self.hist[method] = [0] * (len(BUCKETS) + 2)
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                h[i] += 1
                break
        h[-2] += seconds
        h[-1] += 1

    def http_done(self, path: str, status: int) -> None:
        self.http[(path, status)] += 1

    def render(self, engine) -> bytes:
        rep = f'replica="{self.pid}"'
        lines = ["# HELP lanetrace_query_requests_total JSON-RPC requests by method and outcome.",
                 "# TYPE lanetrace_query_requests_total counter"]
        for (m, o), n in sorted(self.requests.items()):
            lines.append(f'lanetrace_query_requests_total{{{rep},method="{_esc(m)}",outcome="{o}"}} {n}')
        lines += ["# HELP lanetrace_query_request_duration_seconds JSON-RPC request latency.",
                  "# TYPE lanetrace_query_request_duration_seconds histogram"]
        for m, h in sorted(self.hist.items()):
            acc = 0
            lab = f'{rep},method="{_esc(m)}"'
            for i, b in enumerate(BUCKETS):
                acc += h[i]
                lines.append(f'lanetrace_query_request_duration_seconds_bucket{{{lab},le="{b}"}} {acc}')
            lines.append(f'lanetrace_query_request_duration_seconds_bucket{{{lab},le="+Inf"}} {h[-1]}')
            lines.append(f"lanetrace_query_request_duration_seconds_sum{{{lab}}} {h[-2]:.6f}")
            lines.append(f"lanetrace_query_request_duration_seconds_count{{{lab}}} {h[-1]}")
        lines += ["# HELP lanetrace_query_http_responses_total HTTP responses by path and status.",
                  "# TYPE lanetrace_query_http_responses_total counter"]
        for (p, s), n in sorted(self.http.items()):
            lines.append(f'lanetrace_query_http_responses_total{{{rep},path="{_esc(p)}",status="{s}"}} {n}')
        st = engine.store.stats
        lines += ["# HELP lanetrace_query_cache_hits_total Cache hits (index: opened trace reused; result: memoised selection).",
                  "# TYPE lanetrace_query_cache_hits_total counter",
                  f'lanetrace_query_cache_hits_total{{{rep},cache="index"}} {st["index_hits"]}',
                  f'lanetrace_query_cache_hits_total{{{rep},cache="result"}} {engine.memo.hits}',
                  "# HELP lanetrace_query_cache_misses_total Cache misses.",
                  "# TYPE lanetrace_query_cache_misses_total counter",
                  f'lanetrace_query_cache_misses_total{{{rep},cache="index"}} {st["index_loads"] + st["index_builds"]}',
                  f'lanetrace_query_cache_misses_total{{{rep},cache="result"}} {engine.memo.misses}',
                  "# HELP lanetrace_query_index_builds_total Indexes built by this replica.",
                  "# TYPE lanetrace_query_index_builds_total counter",
                  f"lanetrace_query_index_builds_total{{{rep}}} {st['index_builds']}",
                  "# HELP lanetrace_query_connections Open client connections.",
                  "# TYPE lanetrace_query_connections gauge",
                  f"lanetrace_query_connections{{{rep}}} {self.connections}"]
        return ("\n".join(lines) + "\n").encode()


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
