"""Host-made round inputs handed to the worker as owner-only files, removed after the round."""

import os
import stat

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import handoff
from dopamine_tff import process
from dopamine_tff import tf_rounds


@pytest.mark.parametrize("dtype", [np.int64, np.uint32])
def test_put_then_receive_in_graph_is_the_array(tmp_path, dtype):
  h = handoff.Handoff(str(tmp_path / "h"))
  info = np.iinfo(dtype)
  array = np.random.default_rng(0).integers(info.min, info.max, 1001, dtype=dtype, endpoint=True)
  path = h.put(array)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  assert stat.S_IMODE(os.stat(h.directory).st_mode) == 0o700
  got = tf.function(lambda p: handoff.receive(p, tf.as_dtype(dtype)))(tf.constant(path))
  np.testing.assert_array_equal(got.numpy(), array)
  # The array itself passes through unchanged (workers that get it inline).
  np.testing.assert_array_equal(handoff.receive(tf.constant(array), tf.as_dtype(dtype)), array)
  h.clear()
  assert os.listdir(h.directory) == []
  h.close()
  assert not os.path.exists(h.directory)


def test_other_dtypes_are_refused(tmp_path):
  with pytest.raises(TypeError, match="int64 or uint32"):
    handoff.Handoff(str(tmp_path)).put(np.zeros(3, np.float64))


def test_specs():
  assert handoff.spec(7, tf.int64, True) == tf.TensorSpec([], tf.string)
  assert handoff.spec(7, tf.uint32, False) == tf.TensorSpec([7], tf.uint32)


class _Failing:
  def __init__(self, seen):
    self.seen = seen

  def next(self, state, correction, datasets, keys, dithers):
    self.seen.extend(dithers)
    assert all(os.path.exists(p) for p in dithers)  # there while the round runs
    raise RuntimeError("worker died")


def test_a_round_s_files_are_removed_even_when_the_round_fails(tmp_path):
  h = handoff.Handoff(str(tmp_path / "h"))
  seen = []
  rnd = process.DpSgdRound(_Failing(seen), h)
  state = tf_rounds.ServerState([np.zeros(5, np.float32)], [], np.int32(0))
  inputs = tf_rounds.RoundInputs(
    datasets=[None, None],
    keys=[None, None],
    dither_keys=[np.ones((1, 8), np.uint32)] * 2,
    dither_signs=[np.array([1]), np.array([-1])],
  )
  with pytest.raises(RuntimeError, match="worker died"):
    rnd.run(state, inputs)
  assert len(seen) == 2 and not any(os.path.exists(p) for p in seen)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
  import errno

  from dopamine_tff.program import durable

  h = handoff.Handoff(str(tmp_path / "h"))
  h.put(np.zeros(3, np.int64))
  real = os.fdopen

  def full(fd, *a, **kw):
    os.close(fd)
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fdopen", full)
  with pytest.raises(durable.WriteFailed, match="cannot write the round's input file .*--resume"):
    h.put(np.zeros(3, np.int64))
  monkeypatch.setattr(os, "fdopen", real)
  assert os.listdir(h.directory) == []
