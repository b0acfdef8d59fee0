"""Hook selection, frida-trace style: ``-i/--include 'MODULE!FUNCTION'`` and
``-x/--exclude`` function globs, ``-I/--include-module`` and
``-X/--exclude-module`` module globs. Globs use fnmatch syntax (``*``, ``?``,
``[...]``), case-sensitive, as the agent matches them inside the target."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field


class SelectionError(ValueError):
    pass


def _check_glob(glob: str, what: str) -> None:
    if not glob:
        raise SelectionError(f"empty {what} glob")
    if any(c.isspace() for c in glob):
        raise SelectionError(f"malformed {what} glob {glob!r}: contains white space")
    i = 0
    while i < len(glob):
        if glob[i] == "[":
            # fnmatch takes a ']' right after '[' or '[!' as a literal member
            start = i + 2 if glob[i + 1:i + 2] == "!" else i + 1
            close = glob.find("]", start + 1 if glob[start:start + 1] == "]" else start)
            if close < 0:
                raise SelectionError(f"malformed {what} glob {glob!r}: '[' at position {i} is never closed")
            i = close
        i += 1


def _separators(glob: str) -> list[int]:
    """Positions of '!' that separate MODULE from FUNCTION: those outside a
    bracket expression, where '!' means negation instead."""
    found, in_bracket = [], False
    for i, c in enumerate(glob):
        if c == "[" and not in_bracket:
            in_bracket = True
        elif c == "]" and in_bracket and glob[i - 1] not in "[!":
            in_bracket = False
        elif c == "!" and not in_bracket:
            found.append(i)
    return found


def split_function_glob(glob: str) -> tuple[str | None, str]:
    """'MODULE!FUNCTION' → (MODULE, FUNCTION); 'FUNCTION' → (None, FUNCTION)."""
    seps = _separators(glob)
    if len(seps) > 1:
        raise SelectionError(f"malformed function glob {glob!r}: more than one '!' "
                             "(expected MODULE!FUNCTION or FUNCTION)")
    if seps:
        module, function = glob[:seps[0]], glob[seps[0] + 1:]
        if not module or not function:
            raise SelectionError(f"malformed function glob {glob!r}: empty "
                                 f"{'module' if not module else 'function'} part")
        _check_glob(module, "module")
        _check_glob(function, "function")
        return module, function
    _check_glob(glob, "function")
    return None, glob


@dataclass
class Selection:
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    include_modules: list[str] = field(default_factory=list)
    exclude_modules: list[str] = field(default_factory=list)

    def validate(self) -> "Selection":
        for g in self.include + self.exclude:
            split_function_glob(g)
        for g in self.include_modules + self.exclude_modules:
            _check_glob(g, "module")
        return self

    def to_agent(self) -> dict:
        return {"include": self.include, "exclude": self.exclude,
                "includeModules": self.include_modules, "excludeModules": self.exclude_modules}

    @classmethod
    def from_agent(cls, d: dict) -> "Selection":
        return cls(list(d.get("include", ())), list(d.get("exclude", ())),
                   list(d.get("includeModules", ())), list(d.get("excludeModules", ())))

    def unmatched(self, functions: list[dict], loaded_modules: list[str]) -> list[str]:
        """Include globs that select nothing now and cannot select anything
        later: a glob naming a module that is not loaded yet stays pending
        (it is hooked on dlopen), every other glob must match something."""
        problems = []
        for g in self.include:
            module_glob, func_glob = split_function_glob(g)
            if module_glob is not None and not any(fnmatch.fnmatchcase(m, module_glob)
                                                   for m in loaded_modules):
                continue
            if not any(fnmatch.fnmatchcase(f["name"], func_glob) and
                       (module_glob is None or fnmatch.fnmatchcase(f["module"], module_glob))
                       for f in functions):
                problems.append(f"-i {g!r} matches no function")
        for g in self.include_modules:
            if any(fnmatch.fnmatchcase(m, g) for m in loaded_modules) and \
                    not any(fnmatch.fnmatchcase(f["module"], g) for f in functions):
                problems.append(f"-I {g!r} matches a module with no hookable function")
        return problems
