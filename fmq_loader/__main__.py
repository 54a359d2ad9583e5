"""``python -m fmq_loader``: runs the command line in tools/cli.py."""

import sys

from fmq_loader.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
