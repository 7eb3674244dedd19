"""`python -m rlr` (and `torchrun -m rlr`) runs the command line."""

import sys

from rlr.cli import main

sys.exit(main())
