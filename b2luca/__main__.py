"""``python -m b2luca``: the ``b2luca`` command (batch jobs run it with the absolute interpreter)."""

import sys

from .cli import main

sys.exit(main())
