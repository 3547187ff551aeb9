"""``python -m riverside_trio``: the same as the ``riverside-trio`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
