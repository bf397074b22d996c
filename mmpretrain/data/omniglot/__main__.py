"""``python -m mmpretrain.data.omniglot <dest>``: unpack the vendored Omniglot drawings and print the folder."""

import sys

from mmpretrain.data.omniglot import omniglot_folder

if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
    sys.exit("usage: python -m mmpretrain.data.omniglot <dest folder>  (unpacks <dest>/<alphabet>/<character>/*.png)")
print(omniglot_folder(sys.argv[1]))
