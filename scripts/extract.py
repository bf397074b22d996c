"""`python scripts/extract.py encoder=... input=... output=...`: the same as `mmpretrain-extract` from a checkout."""

from mmpretrain.cli.extract import main

if __name__ == "__main__":
    main()
