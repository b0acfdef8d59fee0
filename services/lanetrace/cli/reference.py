"""Render the CLI reference (docs/cli.md) from the argument parser itself,
so the documentation cannot drift from the command.

    python -m lanetrace.cli.reference > docs/cli.md
"""
import argparse
import os
import sys

from lanetrace.cli import build_parser

HEADER = """# lanetrace command reference

Generated from the argument parser by `python -m lanetrace.cli.reference`;
a test fails when this file is out of date.
"""


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            # choices keeps registration order; aliases point at the same parser
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub


def render() -> str:
    # Help text wraps at the terminal width; fix it so the output is stable.
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    parts = [HEADER, "```", parser.format_help().rstrip(), "```"]

    def walk(prefix: str, p: argparse.ArgumentParser):
        for name, sub in _subparsers(p):
            full = f"{prefix} {name}"
            parts.extend([f"\n## `{full}`\n", "```", sub.format_help().rstrip(), "```"])
            walk(full, sub)

    walk("lanetrace", parser)
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
