"""`python -m popsync`: the same as the `popsync` command."""

import sys

from popsync.cli import main

sys.exit(main())
