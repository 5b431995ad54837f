"""Run the ectls command line: ``python -m ectls``."""

import sys

from ectls.cli import main

sys.exit(main())
