"""Durable writes: storage errors as one line, and fsync of renamed entries.

Everything a run writes (checkpoints, metrics, summaries, weights) goes
through ``writing``: a full disk or an I/O error becomes WriteFailed naming
the file and what it is, and the temporary file is removed, so the previous
complete state stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil


class WriteFailed(RuntimeError):
  """A file of the run could not be written (a full disk, an I/O error)."""


# Errors of the storage, not of the program: the run stops with one line.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)


@contextlib.contextmanager
def writing(path: str, what: str, cleanup: str | None = None):
  """Turns a storage error while writing `what` at `path` into WriteFailed.

  Args:
    path: the file or directory being written (named in the message).
    what: what it is ("checkpoint", "metrics.csv", ...).
    cleanup: a temporary file or directory to remove on failure.
  """
  try:
    yield
  except OSError as e:
    if cleanup is not None:
      if os.path.isdir(cleanup):
        shutil.rmtree(cleanup, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(cleanup)
    if e.errno not in STORAGE_ERRNOS:
      raise
    raise WriteFailed(
      f"cannot write the {what} {path}: {e.strerror or e}; the last complete checkpoint is "
      "intact: free space (or fix the disk) and rerun with --resume"
    ) from None


def fsync_dir(path: str) -> None:
  """Makes a rename or a new entry in directory `path` durable."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
