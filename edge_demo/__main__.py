import sys

from edge_demo.app import main

sys.exit(main())
