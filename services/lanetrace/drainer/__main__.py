import sys

from lanetrace.drainer.drainer import main

sys.exit(main())
