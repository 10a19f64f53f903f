"""The einsum path equals a per-example loop: norms and clipped sums."""

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


@pytest.mark.parametrize(
  "name,shape,clip",
  [
    ("small_cnn", (16, 16, 3), 0.5),
    ("small_cnn", (8, 8, 1), 100.0),
    ("squeezenet", (33, 33, 3), 0.05),
    ("squeezenet", (32, 32, 3), 1e-3),
  ],
)
def test_norms_and_clipped_sum_equal_a_loop(name, shape, clip):
  tf.keras.utils.set_random_seed(3)
  model = models.build(name, shape, 5)
  assert fast_clip.supports(model)
  x = tf.random.normal([6, *shape])
  y = tf.constant([0, 1, 2, 3, 4, 0], tf.int32)
  summed, norms = fast_clip.clipped_sum(model, x, y, clip, dp_sgd.loss_per_example)
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
