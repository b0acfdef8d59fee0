import sys

from lanetrace.cli import main

sys.exit(main())
