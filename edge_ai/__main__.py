"""`python -m edge_ai` runs the same command line as `edge-ai`."""

import sys

from edge_ai.cli import main

sys.exit(main())
