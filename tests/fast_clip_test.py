"""Every branch of the fast path equals a per-example loop: norms and clipped sums."""

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import dp_sgd
from dopamine_tff import fast_clip
from dopamine_tff import models


def _reference(model, x, y, clip):
  norms, total = [], None
  for i in range(len(y)):
    with tf.GradientTape() as tape:
      loss = dp_sgd.loss_per_example(model(x[i : i + 1]), y[i : i + 1])
    g = tape.gradient(loss, model.trainable_variables)
    n = float(tf.linalg.global_norm(g))
    norms.append(n)
    scaled = [t * min(1.0, clip / n) for t in g]
    total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
  return np.array(norms), total


def _mixed_model(shape=(11, 11, 2)):
  """Every layer form fast_clip supports: 3x3 same and valid, strided, 1x1, 2-D and 3-D Dense."""
  inputs = tf.keras.Input(shape)
  x = tf.keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
  x = tf.keras.layers.Activation("tanh")(x)
  x = tf.keras.layers.Conv2D(5, 3, strides=2, padding="valid")(x)
  x = tf.keras.layers.Activation("relu")(x)
  x = tf.keras.layers.Conv2D(6, 1)(x)
  x = tf.keras.layers.Activation("tanh")(x)
  x = tf.keras.layers.Conv2D(3, 2, padding="valid")(x)
  x = tf.keras.layers.Reshape((-1, 3))(x)
  x = tf.keras.layers.Dense(7)(x)  # on a sequence: T > 1 positions
  x = tf.keras.layers.Activation("tanh")(tf.keras.layers.Flatten()(x))
  return tf.keras.Model(inputs, tf.keras.layers.Dense(5)(x))


@pytest.mark.parametrize("strategy", ["auto", "ghost", "explicit", "loop", "grouped"])
@pytest.mark.parametrize(
  "name,shape,clip",
  [
    ("small_cnn", (16, 16, 3), 0.5),
    ("small_cnn", (8, 8, 1), 100.0),
    ("squeezenet", (33, 33, 3), 0.05),
    ("squeezenet", (32, 32, 3), 1e-3),
    ("mixed", (11, 11, 2), 0.1),
  ],
)
def test_norms_and_clipped_sum_equal_a_loop(name, shape, clip, strategy):
  tf.keras.utils.set_random_seed(3)
  model = _mixed_model(shape) if name == "mixed" else models.build(name, shape, 5)
  assert fast_clip.supports(model)
  x = tf.random.normal([6, *shape])
  y = tf.constant([0, 1, 2, 3, 4, 0], tf.int32)
  summed, norms = fast_clip.clipped_sum(
    model, x, y, clip, dp_sgd.loss_per_example, strategy=strategy
  )
  ref_norms, ref_sum = _reference(model, x, y, clip)
  np.testing.assert_allclose(norms.numpy(), ref_norms, rtol=1e-4)
  assert len(summed) == len(model.trainable_variables)
  for got, ref, v in zip(summed, ref_sum, model.trainable_variables):
    assert got.shape == v.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-4, atol=1e-6)


def test_works_inside_tf_function_with_varying_batch_sizes():
  model = models.small_cnn((8, 8, 1), 3)
  fn = tf.function(lambda x, y: fast_clip.clipped_sum(model, x, y, 1.0, dp_sgd.loss_per_example))
  for b in (3, 7):
    summed, norms = fn(tf.ones([b, 8, 8, 1]), tf.zeros([b], tf.int32))
    assert norms.shape == (b,)
  # Empty Poisson batches never reach fast_clip: dp_sgd skips them.
  res = dp_sgd.noisy_clipped_sum(
    model,
    tf.zeros([0, 8, 8, 1]),
    tf.zeros([0], tf.int32),
    sampling_prob=0.5,
    l2_norm_clip=1.0,
    noise_stddev=0.0,
    seed=tf.constant([1, 1], tf.int64),
  )
  assert all(float(tf.reduce_max(tf.abs(s))) == 0 for s in res.noisy_sum)


def test_unsupported_models_are_detected():
  inputs = tf.keras.Input((8, 8, 1))
  fused = tf.keras.layers.Conv2D(2, 3, activation="relu")(inputs)
  model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(fused)))
  assert not fast_clip.supports(model)
  dilated = tf.keras.layers.Conv2D(2, 3, dilation_rate=2)(inputs)
  model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(dilated)))
  assert not fast_clip.supports(model)
  # dp_sgd then falls back to the vectorised path and still clips.
  res = dp_sgd.noisy_clipped_sum(
    model,
    tf.random.normal([4, 8, 8, 1]),
    tf.zeros([4], tf.int32),
    sampling_prob=1.0,
    l2_norm_clip=1e-3,
    noise_stddev=0.0,
    seed=tf.constant([1, 1], tf.int64),
  )
  assert float(tf.linalg.global_norm(res.noisy_sum)) <= 4e-3 + 1e-6


@pytest.mark.parametrize("name", ["small_cnn", "squeezenet"])
def test_supports_is_stable_and_a_second_trace_takes_the_einsum_path(name, monkeypatch):
  shape = (16, 16, 3)
  model = models.build(name, shape, 5)
  variables = [v.ref() for v in model.trainable_variables]
  assert fast_clip.supports(model)

  def slow_path(*args, **kwargs):
    raise AssertionError("fell back to the vectorized_map path")

  monkeypatch.setattr(dp_sgd, "per_example_gradients", slow_path)
  x = tf.random.normal([4, *shape])
  y = tf.constant([0, 1, 2, 3], tf.int32)
  seed = tf.constant([1, 2], tf.int64)
  for _ in range(2):  # two separate traces (a new tf.function each time)
    step = tf.function(
      lambda x, y: dp_sgd.noisy_clipped_sum(
        model, x, y, sampling_prob=1.0, l2_norm_clip=1.0, noise_stddev=0.0, seed=seed
      )
    )
    step(x, y)
    assert fast_clip.supports(model)
  # The cached tap model is not tracked by the model.
  assert [v.ref() for v in model.trainable_variables] == variables
  assert len(model.layers) == len(models.build(name, shape, 5).layers)


@pytest.mark.parametrize("strategy", ["auto", "ghost", "explicit", "loop", "grouped"])
def test_group_norms_and_sums_equal_a_per_group_loop(strategy):
  tf.keras.utils.set_random_seed(4)
  model = _mixed_model()
  x = tf.random.normal([7, 11, 11, 2])
  y = tf.constant([0, 1, 2, 3, 4, 0, 1], tf.int32)
  groups = tf.constant([0, 2, 0, 1, 2, 2, 3], tf.int32)
  clip = 0.05
  summed, norms = fast_clip.clipped_sum(
    model, x, y, clip, dp_sgd.loss_per_example, groups, 4, strategy=strategy
  )
  ref_total = None
  for gid in range(4):
    idx = tf.where(groups == gid)[:, 0]
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(dp_sgd.loss_per_example(model(tf.gather(x, idx)), tf.gather(y, idx)))
    g = tape.gradient(loss, model.trainable_variables)
    n = float(tf.linalg.global_norm(g))
    np.testing.assert_allclose(float(norms[gid]), n, rtol=1e-4)
    scaled = [t * min(1.0, clip / n) for t in g]
    ref_total = scaled if ref_total is None else [a + b for a, b in zip(ref_total, scaled)]
  for got, ref in zip(summed, ref_total):
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-4, atol=1e-7)


def test_choose_takes_each_branch_where_it_is_cheaper():
  # The benchmark models at their benchmark sizes: per-layer choices.
  plans = {
    (name, size): {lp.name: lp for lp in fast_clip.plan(models.build(name, (size, size, 3), 5))}
    for name, size in [("small_cnn", 64), ("squeezenet", 64), ("squeezenet", 224)]
  }
  small = plans[("small_cnn", 64)]
  assert small["dense"].strategy == "ghost"  # T = 1: ||x||^2 ||g||^2
  # T = 4096 and 1024: one grouped weight gradient over the batch; T = 256: matmuls.
  assert small["conv0"].strategy == "grouped" and small["conv1"].strategy == "grouped"
  assert small["conv2"].strategy == "explicit"
  sq64, sq224 = plans[("squeezenet", 64)], plans[("squeezenet", 224)]
  assert sq64["fire9_e3x3"].strategy == "ghost"  # T = 16, p d = 147456
  assert sq64["conv1"].strategy == "loop"  # strided
  assert sq64["fire2_e3x3"].strategy == "explicit"
  assert sq224["fire9_e3x3"].strategy == "loop"  # T = 196: T p d = 2^24.8
  assert sq224["fire9_squeeze"].strategy == "explicit"  # 1x1: a matmul per example
  # The rule itself, at its edges.
  t, p, d = 16, 576, 256
  assert fast_clip.choose(t, p, d) == "ghost"
  assert t * t * (p + d) < fast_clip.GHOST_FACTOR * p * d
  assert fast_clip.choose(64, 288, 128) == "explicit"
  assert fast_clip.choose(64, 288, 128, strided=True) == "loop"
  assert fast_clip.choose(1024, 144, 32, conv_kernel=True) == "grouped"
  assert fast_clip.choose(1024, 144, 32) == "explicit"  # a Dense or 1x1 layer
  assert fast_clip.choose(256, 288, 32, conv_kernel=True) == "explicit"
  # A forced strategy applies everywhere it can; a 1x1 or Dense layer has no loop form.
  forced = fast_clip.plan(_mixed_model(), "loop")
  assert [lp.strategy for lp in forced] == [
    "loop",
    "loop",
    "explicit",
    "loop",
    "explicit",
    "explicit",
  ]
  with pytest.raises(ValueError, match="strategy must be one of"):
    fast_clip.plan(_mixed_model(), "fastest")


@pytest.mark.parametrize(
  "name,trainable",
  [("small_cnn", "head"), ("small_cnn", "from:conv2"), ("squeezenet", "from:fire9_squeeze")],
)
def test_frozen_layers_get_no_gradient_and_the_rest_equals_a_loop(name, trainable):
  """Issue 19's --trainable: the norms and sums cover the trainable layers only."""
  tf.keras.utils.set_random_seed(4)
  model = models.build(name, (16, 16, 3), 5, trainable)
  assert fast_clip.supports(model)
  assert 0 < len(model.trainable_variables) < len(models.variables(model))
  x = tf.random.normal([5, 16, 16, 3])
  y = tf.constant([0, 1, 2, 3, 4], tf.int32)
  summed, norms = fast_clip.clipped_sum(model, x, y, 0.05, dp_sgd.loss_per_example)
  ref_norms, ref_sum = _reference(model, x, y, 0.05)  # w.r.t. trainable_variables
  np.testing.assert_allclose(norms.numpy(), ref_norms, rtol=1e-4)
  for got, ref in zip(summed, ref_sum, strict=True):
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-4, atol=1e-6)
  # With noise, the frozen variables' entries stay exact zeros; the others are noised.
  res = dp_sgd.noisy_clipped_sum(
    model, x, y, sampling_prob=1.0, l2_norm_clip=0.05, noise_stddev=1.0,
    seed=tf.constant([5, 6], tf.int64),
  )  # fmt: skip
  trains = {v.ref() for v in model.trainable_variables}
  for v, g in zip(models.variables(model), res.noisy_sum, strict=True):
    assert g.shape == v.shape
    assert (float(tf.reduce_max(tf.abs(g))) > 0) == (v.ref() in trains), v.name
