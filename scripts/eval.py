"""`python scripts/eval.py key=value ...`: the same as `mmpretrain-eval` from a checkout."""

from mmpretrain.cli.eval import main

if __name__ == "__main__":
    main()
