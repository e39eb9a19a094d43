"""`python -m imserver ...` is the `imserver` console script."""

import sys

from imserver.cli import main

sys.exit(main())
