"""Flight-recorder policy (core/flightrec.py): trigger parsing, symbol trigger
resolution, window merging."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanetrace.core import flightrec
from lanetrace.core.flightrec import Trigger, TriggerError, merge_windows, parse_trigger

FUNCS = [{"id": 1, "name": "parse_error", "module": "app"},
         {"id": 2, "name": "handle_io_failure", "module": "app"},
         {"id": 3, "name": "handle_net_failure", "module": "libnet.so"},
         {"id": 4, "name": "handle_ok", "module": "app"}]


@pytest.mark.parametrize("text,kind,fields", [
    ("symbol=parse_error", "symbol", {"name": "parse_error", "module": ""}),
    ("symbol=libnet.so!handle_net_failure", "symbol",
     {"name": "handle_net_failure", "module": "libnet.so"}),
    ("symbol~=^handle_.*_failure$", "symbol", {"pattern": "^handle_.*_failure$"}),
    ("crash", "crash", {}),
    ("time=3.0", "time", {"seconds": 3.0}),
    ("time=0", "time", {"seconds": 0.0}),
])
def test_parse_trigger__valid_forms__then_parsed(text, kind, fields):
    t = parse_trigger(text)
    assert t.kind == kind and t.text == text
    for k, v in fields.items():
        assert getattr(t, k) == v
    assert Trigger.from_spec(t.to_spec()) == t


@pytest.mark.parametrize("text,message", [
    ("symbol=", "expected symbol=NAME"),
    ("symbol=!foo", "expected symbol=NAME"),
    ("symbol~=", "needs a regular expression"),
    ("symbol~=(unclosed", "bad regular expression"),
    ("time=soon", "needs a number"),
    ("time=-1", ">= 0"),
    ("time=nan", "finite"),
    ("crashes", "unknown trigger"),
    ("sym=boom", "unknown trigger"),
    ("", "unknown trigger"),
])
def test_parse_trigger__malformed__then_specific_error(text, message):
    with pytest.raises(TriggerError, match=message):
        parse_trigger(text)


def test_resolve_symbol_triggers__name_module_and_regex__then_matching_ids():
    trigs = [parse_trigger("symbol=parse_error"), parse_trigger("symbol~=^handle_.*_failure$"),
             parse_trigger("crash")]
    assert flightrec.resolve_symbol_triggers(trigs, FUNCS) == {
        1: "symbol=parse_error", 2: "symbol~=^handle_.*_failure$",
        3: "symbol~=^handle_.*_failure$"}
    only_lib = [parse_trigger("symbol=libnet.so!handle_net_failure")]
    assert flightrec.resolve_symbol_triggers(only_lib, FUNCS) == {3: only_lib[0].text}


def test_resolve_symbol_triggers__no_hooked_function_matches__then_error_names_trigger():
    trigs = [parse_trigger("symbol=parse_error"), parse_trigger("symbol=app!nope")]
    with pytest.raises(TriggerError, match="symbol=app!nope matches no hooked function"):
        flightrec.resolve_symbol_triggers(trigs, FUNCS)


def test_merge_windows__overlapping_and_disjoint__then_overlaps_merged_labels_joined():
    ws = [{"startNs": 50, "endNs": 80, "trigger": "crash"},
          {"startNs": 0, "endNs": 60, "trigger": "symbol=a"},
          {"startNs": 100, "endNs": 120, "trigger": "time=1"},
          {"startNs": 10, "endNs": 20, "trigger": "symbol=a"}]
    assert merge_windows(ws) == [
        {"startNs": 0, "endNs": 80, "trigger": "symbol=a, crash"},
        {"startNs": 100, "endNs": 120, "trigger": "time=1"}]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=12),
       st.integers(0, 1300))
def test_merge_windows__any_windows__then_disjoint_sorted_and_cover_same_points(pairs, probe):
    ws = [{"startNs": s, "endNs": s + d, "trigger": "x"} for s, d in pairs]
    merged = merge_windows(ws)
    assert all(a["endNs"] < b["startNs"] for a, b in zip(merged, merged[1:]))
    inside = any(w["startNs"] <= probe <= w["endNs"] for w in ws)
    assert inside == any(w["startNs"] <= probe <= w["endNs"] for w in merged)


# ---- pre-roll buffer ------------------------------------------------------------


def test_merge_windows__bare_kind_label_next_to_full_label__then_only_full_label_kept():
    ws = [{"startNs": 0, "endNs": 10, "trigger": "time"},
          {"startNs": 0, "endNs": 10, "trigger": "time=3.0"},
          {"startNs": 5, "endNs": 12, "trigger": "crash"}]
    assert merge_windows(ws) == [{"startNs": 0, "endNs": 12, "trigger": "time=3.0, crash"}]
