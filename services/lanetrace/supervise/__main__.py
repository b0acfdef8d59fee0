import sys

from lanetrace.supervise.launcher import main

sys.exit(main())
