"""`python scripts/train.py key=value ...`: the same as `mmpretrain-train` from a checkout."""

from mmpretrain.cli.train import main

if __name__ == "__main__":
    main()
