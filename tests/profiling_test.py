"""profiling: op-type times, per-layer strategy costs, the benchmark's step functions."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import dp_sgd
from dopamine_tff import fast_clip
from dopamine_tff import models
from dopamine_tff import profiling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_op_times_names_the_ops_that_ran():
  a = tf.random.normal([64, 64])

  @tf.function
  def fn():
    return tf.reduce_sum(tf.matmul(a, a))

  fn()
  ops = profiling.op_times(fn, calls=2)
  # oneDNN may rewrite the kernel to _MklMatMul (seen in a full-suite run).
  assert ops.get("MatMul", 0) + ops.get("_MklMatMul", 0) > 0
  assert all(v >= 0 for v in ops.values())
  assert not any(k.strip().startswith("__inference") or k in ("Run", "Process") for k in ops)


def test_layer_costs_time_every_applicable_strategy():
  tf.keras.utils.set_random_seed(0)
  model = models.build("squeezenet", (32, 32, 3), 5)
  x = tf.random.normal([4, 32, 32, 3])
  y = tf.constant([0, 1, 2, 3], tf.int32)
  rows = profiling.layer_costs(model, x, y, repeats=1, warmup=0, max_gram_positions=64)
  assert [r.plan.name for r in rows] == [lp.name for lp in fast_clip.plan(model)]
  for r in rows:
    assert r.plain_ms > 0 and r.ms["explicit"] > 0
    assert r.ms[r.plan.strategy] is not None
    assert (r.ms["ghost"] is None) == (r.plan.positions > 64)
    assert (r.ms["loop"] is None) == (r.plan.name.endswith(("squeeze", "e1x1", "conv10")))


def test_dp_step_without_clipping_or_noise_is_the_plain_step():
  tf.keras.utils.set_random_seed(1)
  shape = (16, 16, 3)
  x = tf.random.normal([5, *shape])
  y = tf.constant([0, 1, 2, 3, 4], tf.int32)
  after = {}
  for impl in ("plain_sgd", "ours_fast", "ours_vectorized_map"):
    model = models.build("small_cnn", shape, 5)
    model.set_weights(models.initial_weights("small_cnn", shape, 5, seed=0))
    profiling.step_fns(model, x, y, 1e6, 0.0, 0.1)[impl]()
    after[impl] = model.get_weights()
  for impl in ("ours_fast", "ours_vectorized_map"):
    for a, b in zip(after["plain_sgd"], after[impl]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  before = models.initial_weights("small_cnn", shape, 5, seed=0)
  assert any(not np.allclose(a, b) for a, b in zip(before, after["plain_sgd"]))


def test_profile_binary_writes_its_report(tmp_path):
  out = tmp_path / "profile.md"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.profile_dp_step",
      "--model=small_cnn",
      "--image_size=16",
      "--batch=4",
      "--repeats=1",
      "--profiled_calls=1",
      f"--output={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert "ratio" in text and "| op type | plain | DP |" in text
  for layer in ("conv0", "conv1", "conv2", "dense", "logits"):
    assert f"| {layer} |" in text
  assert text.count("*") >= 5  # each layer marks its chosen strategy
  bad = subprocess.run(
    [sys.executable, "-m", "experiments.profile_dp_step", "--batch=0"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0 and "--batch must be >= 1, got 0" in bad.stderr


def test_fast_clip_at_a_revision_loads_that_file_as_a_module():
  old = profiling.fast_clip_at("HEAD")
  assert old is not fast_clip and old.__name__ == "fast_clip_at_HEAD"
  tf.keras.utils.set_random_seed(2)
  model = models.build("small_cnn", (8, 8, 3), 5)
  x = tf.random.normal([3, 8, 8, 3])
  y = tf.constant([0, 1, 2], tf.int32)
  got, _ = old.clipped_sum(model, x, y, 0.1, dp_sgd.loss_per_example)
  want, _ = fast_clip.clipped_sum(model, x, y, 0.1, dp_sgd.loss_per_example)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)
  fns = profiling.step_fns(model, x, y, 1.0, 0.0, 0.1, baselines={"HEAD": old})
  assert "ours_fast_HEAD" in fns
  with pytest.raises(ValueError, match="no dopamine_tff/fast_clip.py at revision 'no-such-rev'"):
    profiling.fast_clip_at("no-such-rev")
