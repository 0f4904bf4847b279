"""``python -m embtab`` (and ``torchrun ... -m embtab train recsys``): the command line."""

import sys

from .cli import main

sys.exit(main())
