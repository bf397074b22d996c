"""The project's error family: every failure a user can cause and fix (a bad key, a missing file, bad data, a
refused checkpoint) is an :class:`MMPretrainError`, so the command lines print it as one short line and exit 1,
while anything else keeps its traceback.

The concrete kinds also subclass the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.

Which to raise, by what the user has to fix:

- a key or value they typed (a key out of range, a choice not offered, two keys that contradict each other):
  :class:`ConfigError`, naming the key (:func:`mmpretrain.training.check_range` and
  :func:`~mmpretrain.training.check_choice` raise it);
- a path: :class:`MissingPathError` / :class:`NotAFolderError` / :class:`PathExistsError`;
- a file, store or data set they pointed at that is corrupt, empty or inconsistent (bad JSON on a manifest line,
  a store without the column a task reads, an altered index): :class:`DataError`, naming the file (and line); the
  embedding store's ``StoreError`` and the recsys ``FeatureError`` are DataErrors;
- a run that lost too much of its input: :class:`FailureRateError`.

A call that misuses the Python API (a wrong type, an array of the wrong shape, lists of different lengths passed by
code) keeps a plain ``ValueError`` or ``TypeError``: that is a programming error, not a setting, and keeps its
traceback.
"""

from __future__ import annotations


class MMPretrainError(Exception):
    """Base of every error the project raises on purpose; its message names the key, file or value at fault."""


class ConfigError(MMPretrainError, ValueError):
    """A key or value the user set (on the command line, in a config or in a call) that cannot work."""


class MissingPathError(MMPretrainError, FileNotFoundError):
    """A file or folder named by a key does not exist."""


class NotAFolderError(MMPretrainError, NotADirectoryError):
    """A key names a file where a folder is needed."""


class PathExistsError(MMPretrainError, FileExistsError):
    """An output would replace something that is not an earlier output of the same kind."""


class DataError(MMPretrainError, ValueError):
    """Input data that cannot be used as it is (empty, mislabeled, too small for the task)."""


class WriteError(MMPretrainError, OSError):
    """An output could not be written (a full disk, no permission): names the path, and the space needed where known.
    Nothing half-written is left under the output's final name."""


class FailureRateError(MMPretrainError, RuntimeError):
    """More inputs failed to read than the configured failure rate allows; the message says how to raise it."""
