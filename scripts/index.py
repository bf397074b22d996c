"""`python scripts/index.py build|search|eval key=value ...`: the same as `mmpretrain-index` from a checkout."""

from mmpretrain.cli.index import main

if __name__ == "__main__":
    main()
