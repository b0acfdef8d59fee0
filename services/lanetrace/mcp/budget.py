"""Fitting an answer into a token budget.

An answer is a headline, a few summary facts, then lists (sections), each
with the records it could show, how many exist in all, and how to get the
rest. Records are admitted in a fixed order that does not depend on the
budget: the facts first, then every list's first 3 records, then each
list up to 10, 30, 100, ... The answer is the longest prefix of that order
that fits, so a bigger budget only adds records, and summaries always come
before lists. A record is a whole line or nothing. Every list that left
records out says how many and how to get them; the last line reports the
answer's own token count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lanetrace.mcp import tokens

MIN_BUDGET = 200
MAX_BUDGET = 20_000
DEFAULT_BUDGET = 2_000
# records admitted per list in each round
TIERS = (3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 1 << 62)
INDENT = "  "
# the notes' numbers and cursors vary with what is shown: keep this much spare
NOTE_SLACK = 4
CUT_LINE = "(cut to fit tokenBudget={}; a bigger budget shows more)"


class BudgetError(ValueError):
    pass


def check_budget(value, name="tokenBudget") -> int:
    """The budget, or the default for None; anything else is a BudgetError."""
    if value is None:
        return DEFAULT_BUDGET
    if isinstance(value, bool) or not isinstance(value, int):
        raise BudgetError(f"{name}: must be an integer from {MIN_BUDGET} to {MAX_BUDGET}")
    if not MIN_BUDGET <= value <= MAX_BUDGET:
        raise BudgetError(f"{name}: {value} is out of range; use {MIN_BUDGET} to {MAX_BUDGET} "
                          f"(default {DEFAULT_BUDGET})")
    return value


@dataclass
class Section:
    key: str
    title: str
    lines: list
    records: list
    total: int
    noun: str
    more: Callable[[int], str] | str | None = None
    order: list | None = None  # display sort key of each record (default: as given)
    empty: str = "none"
    header: str | None = None  # a line under the title (column names)
    open_ended: bool = False  # more records follow the given ones, how many is unknown
    essential: bool = False  # its first record goes before the facts (a page must progress)

    def hint(self, shown: int) -> str:
        if callable(self.more):
            return self.more(shown)
        return self.more or ""

    def note(self, shown: int) -> str | None:
        left = self.total - shown
        hint = self.hint(shown)
        if self.open_ended:
            return f"{INDENT}... more {self.noun} follow" + (f": {hint}" if hint else "")
        if left <= 0:
            return None
        return f"{INDENT}... {left} more {self.noun} not shown" + (f": {hint}" if hint else "")


@dataclass
class Rendered:
    text: str
    structured: dict
    tokens: int


@dataclass
class Answer:
    budget: int
    headline: str
    summary: dict = field(default_factory=dict)
    facts: list = field(default_factory=list)
    sections: list = field(default_factory=list)

    def fact(self, line: str) -> None:
        self.facts.append(line)

    def section(self, key, title, lines, records, total=None, noun="items", more=None,
                order=None, empty="none", header=None, open_ended=False,
                essential=False) -> None:
        """``open_ended``: more records follow ``lines``, a number not known
        (``total`` is then ignored)."""
        assert len(lines) == len(records)
        self.sections.append(Section(key, title, list(lines), list(records),
                                     len(lines) if total is None or open_ended
                                     else max(total, len(lines)),
                                     noun, more, order, empty, header, open_ended, essential))

    # ---- fitting -----------------------------------------------------------

    def _admission_order(self):
        first = [s_idx for s_idx, s in enumerate(self.sections) if s.essential and s.lines]
        for s_idx in first:
            yield (s_idx, 0)
        for i in range(len(self.facts)):
            yield ("fact", i)
        lo = 0
        for hi in TIERS:
            more = False
            for s_idx, s in enumerate(self.sections):
                for i in range(max(lo, 1 if s_idx in first else 0), min(hi, len(s.lines))):
                    yield (s_idx, i)
                more |= len(s.lines) > hi
            if not more:
                return
            lo = hi

    def _render(self, n_facts, shown) -> str:
        out = [self.headline]
        out.extend(self.facts[:n_facts])
        for s_idx, s in enumerate(self.sections):
            k = shown[s_idx]
            if s.total == 0 and not s.open_ended:
                out.append(f"{s.title}: {s.empty}")
                continue
            if s.open_ended:
                out.append(f"{s.title} (first {k} shown):")
            else:
                out.append(f"{s.title} ({k} of {s.total} shown):" if k < s.total
                           else f"{s.title} ({s.total}):")
            if s.header and k:
                out.append(INDENT + s.header)
            idx = range(k)
            if s.order is not None:
                idx = sorted(idx, key=lambda i: s.order[i])
            out.extend(INDENT + s.lines[i] for i in idx)
            note = s.note(k)
            if note:
                out.append(note)
        if n_facts < len(self.facts):  # the lists' own notes say what they left out
            out.append(CUT_LINE.format(self.budget))
        return "\n".join(out)

    def render(self) -> Rendered:
        count = tokens.count
        head = count(self.headline + "\n") + count(self._footer(self.budget) + "\n")
        cut_cost = count(CUT_LINE.format(self.budget) + "\n")
        reserve = 0
        for s in self.sections:
            reserve += count(f"{s.title} ({s.total} of {s.total} shown):\n")
            if s.header:
                reserve += count(INDENT + s.header + "\n")
            note = s.note(0) if s.total or s.open_ended else None
            if note:
                reserve += count(note + "\n") + NOTE_SLACK
        used = head + reserve
        n_facts = 0
        shown = [0] * len(self.sections)
        order = list(self._admission_order())
        admitted = 0
        for where, i in order:
            line = self.facts[i] if where == "fact" else INDENT + self.sections[where].lines[i]
            cost = count(line + "\n")
            cut_if = cut_cost if where == "fact" and i + 1 < len(self.facts) else 0
            if used + cost + cut_if > self.budget:
                break
            used += cost
            admitted += 1
            if where == "fact":
                n_facts += 1
            else:
                shown[where] += 1
        # exact count of the real text; drop records from the end while over
        while True:
            cut = admitted < len(order)
            body = self._render(n_facts, shown)
            text, n = self._with_footer(body)
            if n <= self.budget or admitted == 0:
                break
            admitted -= 1
            where, _ = order[admitted]
            if where == "fact":
                n_facts -= 1
            else:
                shown[where] -= 1
        return Rendered(text, self._structured(n_facts, shown, cut, n), n)

    def _footer(self, n):
        return f"[{n} tokens ({tokens.tokenizer_name()}), tokenBudget {self.budget}]"

    def _with_footer(self, body):
        n = tokens.count(body)
        for _ in range(4):  # the footer holds its own count: settle it
            text = f"{body}\n{self._footer(n)}"
            m = tokens.count(text)
            if m == n:
                break
            n = m
        return text, n

    def _structured(self, n_facts, shown, cut, n) -> dict:
        out = {"summary": self.summary}
        for s_idx, s in enumerate(self.sections):
            k = shown[s_idx]
            idx = list(range(k))
            if s.order is not None:
                idx.sort(key=lambda i: s.order[i])
            entry = {"total": None if s.open_ended else s.total, "shown": k,
                     "items": [s.records[i] for i in idx]}
            if k < s.total or s.open_ended:
                entry["more"] = s.hint(k) or None
            out[s.key] = entry
        out["factsShown"] = n_facts
        out["truncated"] = cut
        out["tokens"] = n
        out["tokenBudget"] = self.budget
        out["tokenizer"] = tokens.tokenizer_name()
        return out


def fit_table(budget: int, headline: str, header: str, rows: list, total: int | None = None,
              noun="rows", more=None) -> Rendered:
    """A table (header line, one line per row) cut to the budget: what
    ``lanetrace query ... --budget N`` prints."""
    ans = Answer(budget, headline)
    ans.section("rows", noun, rows, list(range(len(rows))), total=total, noun=noun, more=more,
                header=header)
    return ans.render()
