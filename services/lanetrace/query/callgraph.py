"""Aggregated call graphs (``lanetrace graph``, ``callgraph.get``), like
``uftrace graph``: every completed call is placed at its call path from a
root (the chain of its callers, from index.span_parents) and the calls of one
path are added up. Recursion is folded: a call of a function already on its
path counts at that earlier node, so a recursive descent is one node.

Times are those of functions.list: a node's ``totalTimeNs`` sums the
durations of its calls (a folded recursive call counts in each of its
frames, as in functions.list), ``selfTimeNs`` their self times. Summing the
nodes of one function over the whole graph gives its functions.list figures
for completed calls.
"""
from __future__ import annotations

import numpy as np

from lanetrace.query import params as P
from lanetrace.query.errors import invalid_params

MAX_NODES = 10_000
CALLGRAPH_PARAMS = ("traceId", "functionName", "threadIds", "timeStartNs", "timeEndNs",
                    "maxDepth", "maxNodes")


class Graph:
    """Nodes numbered from 0: ``parent`` (-1 for a root), ``fidx``, and the
    sums ``calls``, ``total``, ``self_`` (numpy arrays)."""

    def __init__(self, parent, fidx, calls, total, self_):
        self.parent, self.fidx, self.calls, self.total, self.self_ = (
            parent, fidx, calls, total, self_)

    def children(self) -> dict:
        out: dict[int, list] = {}
        for n, p in enumerate(self.parent.tolist()):
            out.setdefault(p, []).append(n)
        return out


def span_selection(t, threads=None, time_start=None, time_end=None) -> np.ndarray:
    """Span ids contained in the time window, on the given threads."""
    idx = t.idx
    n = len(idx.sp_start)
    lo = 0 if time_start is None else int(np.searchsorted(idx.sp_start, time_start, "left"))
    hi = n if time_end is None else int(np.searchsorted(idx.sp_start, time_end, "right"))
    ids = np.arange(lo, max(hi, lo), dtype=np.int64)
    if time_end is not None:
        ids = ids[idx.sp_end[ids] <= time_end]
    if threads is not None:
        ids = ids[np.isin(idx.sp_tid[ids], np.asarray(threads, np.int64))]
    return ids


def build(t, ids: np.ndarray, focus_fidx=None) -> tuple[Graph, np.ndarray]:
    """The graph of spans ``ids`` (ascending), and each span's node (-1 when
    not placed). A span whose caller is not in ``ids`` starts a root. With
    ``focus_fidx`` (function indexes), only calls of those functions start a
    root, so the graph is what they call."""
    idx = t.idx
    nsp = len(idx.sp_start)
    node_of = np.full(nsp, -1, np.int64)
    inset = np.zeros(nsp, bool)
    inset[ids] = True
    depth = np.asarray(idx.sp_depth)[ids]
    fidx = np.asarray(idx.sp_fidx)[ids].astype(np.int64)
    par = np.asarray(idx.sp_parent)[ids].astype(np.int64)
    has_par = par >= 0
    has_par[has_par] = inset[par[has_par]]
    par = np.where(has_par, par, -1)
    nfun = max(len(t.names), 1)
    n_parent, n_fidx, path_funcs = [], [], []
    table: dict[tuple[int, int], int] = {}
    focus = None if focus_fidx is None else set(int(f) for f in focus_fidx)

    def node(parent_node, f):
        k = (parent_node, f)
        got = table.get(k)
        if got is not None:
            return got
        if parent_node >= 0 and f in path_funcs[parent_node]:
            # recursion: fold into the node of f already on the path
            n = parent_node
            while n_fidx[n] != f:
                n = n_parent[n]
        else:
            n = len(n_parent)
            n_parent.append(parent_node)
            n_fidx.append(f)
            path_funcs.append((path_funcs[parent_node] if parent_node >= 0 else frozenset()) | {f})
        table[k] = n
        return n

    order = np.argsort(depth, kind="stable")
    bounds = np.flatnonzero(np.diff(depth[order])) + 1
    for level in np.split(order, bounds) if len(order) else []:
        pn = np.where(par[level] >= 0, node_of[np.maximum(par[level], 0)], -1)
        pn = np.where(par[level] >= 0, pn, -1)
        f = fidx[level]
        if focus is not None:
            # outside a focus subtree: only a focus call starts one
            starts = (pn < 0) & np.isin(f, list(focus))
            keep = (pn >= 0) | starts
            level, pn, f = level[keep], pn[keep], f[keep]
        pair = pn * nfun + f
        uniq, inv = np.unique(pair, return_inverse=True)
        # pn = -1 gives a negative pair: floor division still splits it right
        nodes = np.array([node(u // nfun, u % nfun) for u in uniq.tolist()], np.int64)
        node_of[ids[level]] = nodes[inv.reshape(-1)]
    nn = len(n_parent)
    placed = node_of[ids]
    ok = placed >= 0
    calls = np.bincount(placed[ok], minlength=nn).astype(np.int64)
    total = np.bincount(placed[ok], weights=np.asarray(idx.sp_dur)[ids][ok], minlength=nn)
    self_ = np.bincount(placed[ok], weights=np.asarray(idx.sp_self)[ids][ok], minlength=nn)
    g = Graph(np.array(n_parent, np.int64), np.array(n_fidx, np.int64), calls,
              np.rint(total).astype(np.int64), np.rint(self_).astype(np.int64))
    return g, node_of


def tree_json(t, g: Graph, starts, max_depth=None, max_nodes=MAX_NODES) -> tuple[list, bool]:
    """Nested ``[{functionName, module, calls, totalTimeNs, selfTimeNs,
    children}]`` from the nodes ``starts``, children by total time;
    (nodes, truncated by ``max_depth`` or ``max_nodes``)."""
    kids = g.children()
    left = [max_nodes]
    cut = [False]

    def emit(n, depth):
        left[0] -= 1
        out = {"functionName": t.name_obj[g.fidx[n]], "module": t.module_obj[g.fidx[n]],
               "calls": int(g.calls[n]), "totalTimeNs": int(g.total[n]),
               "selfTimeNs": int(g.self_[n]), "children": []}
        if max_depth is None or depth + 1 < max_depth:
            out["children"] = emit_all(kids.get(n, ()), depth + 1)
        elif kids.get(n):
            cut[0] = True
        return out

    def emit_all(nodes, depth):
        out = []
        for c in _ordered(g, nodes):
            if left[0] <= 0:
                cut[0] = True
                break
            out.append(emit(c, depth))
        return out

    return emit_all(starts, 0), cut[0]


def _ordered(g, nodes):
    return sorted(nodes, key=lambda n: (-int(g.total[n]), int(g.fidx[n])))


def callgraph_get(store, params) -> dict:
    """The aggregated call graph.

    Params: ``{traceId, functionName?, threadIds?, timeStartNs?, timeEndNs?,
    maxDepth?, maxNodes=10000}``; the filters select completed calls as in
    functions.list (contained in the window, on those threads).

    Without ``functionName``: ``{roots: [node], truncated}``, the whole
    program from its outermost calls. With it: ``{function: {functionName,
    module, calls, totalTimeNs, selfTimeNs}, callers: [{functionName, module,
    calls, totalTimeNs, selfTimeNs}], callees: [node], truncated}``: its
    direct callers (the function's calls from each, ``functionName`` null for
    calls with no recorded caller) and the graph of what it calls, merged over
    all its calls (recursion folded into ``function``).

    A node is ``{functionName, module, calls, totalTimeNs, selfTimeNs,
    children: [node]}``; children by total time, highest first.
    ``truncated`` says ``maxDepth`` or ``maxNodes`` cut the tree.
    """
    p = P.obj(params, CALLGRAPH_PARAMS)
    fname = P.string(p, "functionName")
    threads = P.int_list(p, "threadIds")
    tlo = P.integer(p, "timeStartNs")
    thi = P.integer(p, "timeEndNs")
    if tlo is not None and thi is not None and tlo >= thi:
        raise invalid_params("timeStartNs: must be < timeEndNs")
    max_depth = P.integer(p, "maxDepth", lo=1, hi=P.INT32_MAX)
    max_nodes = P.integer(p, "maxNodes", MAX_NODES, lo=1, hi=MAX_NODES)
    t = store.get(p.get("traceId"))
    ids = span_selection(t, threads, tlo, thi)
    if fname is None:
        g, _ = build(t, ids)
        roots, truncated = tree_json(t, g, g.children().get(-1, ()), max_depth, max_nodes)
        return {"roots": roots, "truncated": truncated}
    focus = t.fidx_for([fname], None)
    if not len(focus):
        raise invalid_params(f"functionName: no function {fname!r} in the trace")
    g, _ = build(t, ids, focus)
    kids = g.children()
    # what the function calls, merged over its root nodes (one per module)
    starts = [c for r in kids.get(-1, ()) for c in kids.get(r, ())]
    callees, truncated = tree_json(t, g, starts, max_depth, max_nodes)
    idx = t.idx
    fsel = ids[np.isin(np.asarray(idx.sp_fidx)[ids], focus)]
    func = {"functionName": fname,
            "module": t.module_obj[int(focus[0])] if len(focus) == 1 else None,
            "calls": int(len(fsel)), "totalTimeNs": int(np.asarray(idx.sp_dur)[fsel].sum()),
            "selfTimeNs": int(np.asarray(idx.sp_self)[fsel].sum())}
    return {"function": func, "callers": _callers(t, fsel, focus),
            "callees": _merge_siblings(callees), "truncated": truncated}


def _callers(t, fsel, focus):
    """The focus function's calls grouped by the function that made them;
    calls from the function itself (recursion) are folded away."""
    idx = t.idx
    par = np.asarray(idx.sp_parent)[fsel]
    pf = np.where(par >= 0, np.asarray(idx.sp_fidx)[np.maximum(par, 0)], -1).astype(np.int64)
    keep = ~np.isin(pf, focus)
    pf, sel = pf[keep], fsel[keep]
    out = []
    for f in np.unique(pf).tolist():
        m = pf == f
        out.append({"functionName": t.name_obj[f] if f >= 0 else None,
                    "module": t.module_obj[f] if f >= 0 else None,
                    "calls": int(m.sum()), "totalTimeNs": int(np.asarray(idx.sp_dur)[sel[m]].sum()),
                    "selfTimeNs": int(np.asarray(idx.sp_self)[sel[m]].sum())})
    out.sort(key=lambda r: (-r["totalTimeNs"], r["functionName"] or ""))
    return out


def _merge_siblings(nodes):
    """Merge nodes of the same function (from different focus roots)."""
    by: dict = {}
    for n in nodes:
        k = (n["functionName"], n["module"])
        if k not in by:
            by[k] = dict(n, children=list(n["children"]))
        else:
            m = by[k]
            for f in ("calls", "totalTimeNs", "selfTimeNs"):
                m[f] += n[f]
            m["children"].extend(n["children"])
    out = []
    for m in by.values():
        m["children"] = _merge_siblings(m["children"])
        out.append(m)
    out.sort(key=lambda r: (-r["totalTimeNs"], r["functionName"] or ""))
    return out
