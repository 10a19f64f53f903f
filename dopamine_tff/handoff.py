"""A hospital's host-made round inputs handed to its TFF worker through its file system.

The pair dither (quantization.host_dither, int64 [n]) and, under SecAgg, the
mask (masking.host_mask, uint32 [n]) are made on the hospital's host before
its computation runs. Sent in the TFF request they cost the runtime's
serialisation of 8.7 model-lengths of bytes per hospital and round (more than
its DP step at SqueezeNet 64x64 on this machine kind). Where the worker reads
this host's files (the file shard layout), the host writes each one to an
owner-only directory under the run's scratch instead, the computation reads it
(``receive``), and the round's files are removed as soon as the round ends,
released or not. Where the worker cannot see the files (``--worker_data=inline``)
the arrays go in the request as before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil

import numpy as np
import tensorflow as tf

from dopamine_tff.program import durable

_DTYPES = {np.dtype(np.int64): tf.int64, np.dtype(np.uint32): tf.uint32}


class Handoff:
  """Owner-only files of one round's secret inputs (``put``), removed by ``clear``."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    self._paths: list[str] = []

  def put(self, array: np.ndarray) -> str:
    """Writes `array` (int64 or uint32, little-endian raw) to a fresh file; its path."""
    array = np.asarray(array)
    if array.dtype not in _DTYPES:
      raise TypeError(f"handoff takes int64 or uint32 arrays, got {array.dtype}")
    path = os.path.join(self.directory, secrets.token_hex(8))
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
      self._paths.append(path)
      with os.fdopen(fd, "wb") as f:
        f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    except OSError as e:
      self.clear()
      if e.errno not in durable.STORAGE_ERRNOS:
        raise
      raise durable.WriteFailed(
        f"cannot write the round's input file {path}: {e.strerror or e}; the last complete "
        "checkpoint is intact: free space (or fix the disk) and rerun with --resume"
      ) from None
    return path

  def clear(self) -> None:
    """Removes every file put since the last clear."""
    for path in self._paths:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    self._paths.clear()

  def close(self) -> None:
    self.clear()
    shutil.rmtree(self.directory, ignore_errors=True)


def receive(value, dtype):
  """In-graph: `value` itself, or when it is a path (string) the array in that file."""
  if value.dtype != tf.string:
    return tf.cast(value, dtype) if value.dtype != dtype else value
  if dtype == tf.uint32:  # DecodeRaw has no uint32: the same bits as int32
    return tf.bitcast(tf.io.decode_raw(tf.io.read_file(value), tf.int32), tf.uint32)
  return tf.io.decode_raw(tf.io.read_file(value), dtype)


def spec(num_words: int, dtype, via_files: bool) -> tf.TensorSpec:
  """The computation's input type: a path, or the [num_words] array itself."""
  return tf.TensorSpec([], tf.string) if via_files else tf.TensorSpec([num_words], dtype)
