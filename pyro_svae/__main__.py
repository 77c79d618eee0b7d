"""``python -m pyro_svae``: the command line of :mod:`pyro_svae.cli` (``python -m pyro_svae.demo``
is the separate demo module)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
