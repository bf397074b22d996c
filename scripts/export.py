"""`python scripts/export.py store=... output=... format=...`: the same as `mmpretrain-export` from a checkout."""

from mmpretrain.cli.export import main

if __name__ == "__main__":
    main()
