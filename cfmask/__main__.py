"""``python -m cfmask`` runs the ``cfmask`` command line."""

import sys

from cfmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
