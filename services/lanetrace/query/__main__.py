"""python -m lanetrace.query: the query server, as ``lanetrace serve``."""
import sys

from lanetrace.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
