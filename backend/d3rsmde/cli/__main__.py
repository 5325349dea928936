"""``python -m d3rsmde.cli``: the ``d3rsmde`` console script."""

import sys

from . import main

sys.exit(main())
