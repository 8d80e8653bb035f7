"""`python -m pds.cli`: the same as the `pds` console script."""

import sys

from . import main

sys.exit(main())
