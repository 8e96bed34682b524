import sys

from edge_demo.web.server import main

sys.exit(main())
