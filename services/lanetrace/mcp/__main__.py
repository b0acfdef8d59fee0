"""``python -m lanetrace.mcp --trace-root DIR [--allow-capture]``: the same as
``lanetrace mcp``."""
import sys

from lanetrace.cli import main

if __name__ == "__main__":
    sys.exit(main(["mcp", *sys.argv[1:]]))
