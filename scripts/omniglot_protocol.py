"""Checkout wrapper of `python -m mmpretrain.cli.omniglot` (the installed package runs the same)."""

from mmpretrain.cli.omniglot import main

if __name__ == "__main__":
    main()
