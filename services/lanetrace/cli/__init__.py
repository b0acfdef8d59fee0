"""The ``lanetrace`` command.

Each sub-command group lives in its own module of this package and exposes
``register(subparsers)``, which adds its parsers and sets ``func`` on each
(``func(args) -> int`` exit status). The parser is built from those modules
alone, so the CLI reference in docs/ is generated from the same source.
"""
import argparse
import importlib
import sys

# Order here is the order of ``lanetrace --help``.
COMMAND_MODULES = ("capture", "daemon", "query", "views", "serve", "mcp", "export", "diff", "maintenance")


class CliError(Exception):
    """A user error: printed as ``lanetrace: error: <message>``, exit status 2."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lanetrace",
        description="Trace the functions of running or spawned Linux programs, "
        "with no recompilation, and query the traces.",
    )
    from lanetrace import __version__

    parser.add_argument("--version", action="version", version=f"lanetrace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"lanetrace.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lanetrace.cli.{name}":
                continue  # sub-command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"lanetrace: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
