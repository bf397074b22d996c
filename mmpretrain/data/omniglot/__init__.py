"""Real handwriting that ships with the package: Omniglot's ``images_background_small2`` (MIT licence).

3,120 drawings of 156 characters from 5 alphabets, 20 people each (Lake, Salakhutdinov and Tenenbaum, Science 2015;
``LICENSE`` and ``CITATION.bib`` beside the zip). Small enough to vendor (1.6 MB), real enough for the demo, the tests
and the one-shot protocol: pretrain without labels on some alphabets, classify the characters of another.

    >>> from mmpretrain.data import omniglot_folder
    >>> root = omniglot_folder("data/omniglot")        # data/omniglot/<alphabet>/<character>/<drawing>.png
    >>> katakana = root / "Japanese_(katakana)"          # a labelled folder: one class per character

Command line: ``python -m mmpretrain.data.omniglot data/omniglot`` prints the folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from mmpretrain.errors import DataError

__all__ = ["OMNIGLOT_ALPHABETS", "OMNIGLOT_ZIP", "omniglot_folder"]

OMNIGLOT_ZIP = Path(__file__).with_name("images_background_small2.zip")
_SHA256 = "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"
_TOP = "images_background_small2/"
_DONE = ".complete"
OMNIGLOT_ALPHABETS: dict[str, int] = {
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}
"""Characters per alphabet; every character has 20 drawings."""


def omniglot_folder(dest: str | os.PathLike) -> Path:
    """Unpack the vendored drawings to ``dest/<alphabet>/<character>/<drawing>.png`` and return ``dest``.

    Idempotent and atomic: a complete earlier unpacking (marked by ``dest/.complete``) is returned as is; otherwise
    the files are written to a temporary folder beside ``dest`` and renamed into place, so an interrupted call never
    leaves a half-filled folder that looks done.

    Raises:
        DataError: the zip beside this module is missing or altered (sha256), or ``dest`` exists and holds
            something else.
    """
    dest = Path(dest).expanduser()
    if (dest / _DONE).is_file():
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest}: exists and is not an unpacked Omniglot folder (no {_DONE}); choose an empty or "
                        "new folder")
    _check_zip()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
            for member in archive.infolist():
                name = member.filename
                if member.is_dir() or not name.startswith(_TOP) or not name.endswith(".png"):
                    continue
                alphabet, character, drawing = Path(name[len(_TOP) :]).parts  # three levels, nothing else
                target = tmp / alphabet / character / drawing
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
        (tmp / _DONE).write_text(f"{_SHA256}\n")
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_zip() -> None:
    if not OMNIGLOT_ZIP.is_file():
        raise DataError(f"{OMNIGLOT_ZIP}: the vendored Omniglot zip is missing; reinstall mmpretrain-ssl")
    digest = hashlib.sha256(OMNIGLOT_ZIP.read_bytes()).hexdigest()
    if digest != _SHA256:
        raise DataError(f"{OMNIGLOT_ZIP}: sha256 {digest} is not the vendored file's {_SHA256}; reinstall "
                        "mmpretrain-ssl")

