"""Checkout wrapper of ``mmpretrain-shards`` (:mod:`mmpretrain.make_shards`): ``python scripts/make_shards.py SOURCE
OUTPUT [--prefix P] [--maxcount N] [--overwrite]``."""

from mmpretrain.make_shards import main

if __name__ == "__main__":
    main()
