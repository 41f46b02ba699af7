#!/usr/bin/env python3
"""BIDS-App entrypoint."""

import sys

from bidsreface.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
