import sys

from lanetrace.writer.service import main

sys.exit(main())
