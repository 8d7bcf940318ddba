"""`python -m stochnorm` (and `torchrun ... -m stochnorm train ...`): the command line."""

import sys

from .cli import main

sys.exit(main())
