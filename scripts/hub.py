"""`python scripts/hub.py list|download|verify|convert|publish ...`: the same as `mmpretrain-hub` from a checkout."""

import sys

from mmpretrain.cli.hub import main

if __name__ == "__main__":
    sys.exit(main())
