"""Checkout wrapper of `python -m mmpretrain.cli.prepare_frames` (the installed package runs the same)."""

from mmpretrain.cli.prepare_frames import main

if __name__ == "__main__":
    main()
