"""``python -m reslab`` (and ``torchrun -m reslab train ...``)."""

import sys

from reslab.cli import main

sys.exit(main())
