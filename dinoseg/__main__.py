"""``python -m dinoseg``: the same as the ``dinoseg`` console script."""

import sys

from dinoseg.cli import main

sys.exit(main())
