"""``python -m streamledger``: the same as the ``streamledger`` console script."""

import sys

from streamledger.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
