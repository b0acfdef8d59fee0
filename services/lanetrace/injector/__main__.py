import sys

from lanetrace.injector.injector import main

sys.exit(main())
