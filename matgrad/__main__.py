"""``python -m matgrad``: the ``matgrad`` command (also how ``torchrun -m matgrad`` starts it)."""

from __future__ import annotations

import sys

from matgrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
