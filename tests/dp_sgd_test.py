"""Plain-TF DP-SGD pieces: exact with zero noise, statistical with noise."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_privacy as tfp

from dopamine_tff import dp_sgd
from dopamine_tff import models
from dopamine_tff import seeds


@pytest.fixture(scope="module")
def model_and_data():
  tf.keras.utils.set_random_seed(1)
  model = models.small_cnn((8, 8, 1), 4)
  x = tf.random.normal([24, 8, 8, 1])
  y = tf.random.uniform([24], 0, 4, tf.int32)
  return model, x, y


def _loop_grads(model, x, y):
  out = []
  for i in range(len(y)):
    with tf.GradientTape() as tape:
      loss = dp_sgd.loss_per_example(model(x[i : i + 1]), y[i : i + 1])
    out.append(tape.gradient(loss, model.trainable_variables))
  return out


def test_per_example_gradients_equal_a_loop(model_and_data):
  model, x, y = model_and_data
  vec = dp_sgd.per_example_gradients(model, x, y)
  loop = _loop_grads(model, x, y)
  for i in range(len(y)):
    for v, ref in zip(vec, loop[i]):
      np.testing.assert_allclose(v[i].numpy(), ref.numpy(), rtol=1e-4, atol=1e-6)


def test_clipping_matches_gaussian_sum_query(model_and_data):
  model, x, y = model_and_data
  grads = dp_sgd.per_example_gradients(model, x, y)
  clip = 0.05
  clipped, norms = dp_sgd.clip_per_example(grads, clip)
  query = tfp.GaussianSumQuery(clip, 0.0)
  params = query.derive_sample_params(query.initial_global_state())
  for i in range(len(y)):
    ref = query.preprocess_record(params, [g[i] for g in grads])
    for c, r in zip(clipped, ref):
      np.testing.assert_allclose(c[i].numpy(), r.numpy(), rtol=1e-5, atol=1e-7)
    norm_i = tf.linalg.global_norm([c[i] for c in clipped]).numpy()
    assert norm_i <= clip * (1 + 1e-5)
    assert norm_i == pytest.approx(min(clip, norms[i].numpy()), rel=1e-4)


def test_zero_noise_sum_is_exact_sum_of_clipped_sampled_gradients(model_and_data):
  model, x, y = model_and_data
  seed = tf.constant([3, 4], tf.int64)
  res = dp_sgd.noisy_clipped_sum(
    model, x, y, sampling_prob=0.5, l2_norm_clip=0.1, noise_stddev=0.0, seed=seed
  )
  mask = dp_sgd.poisson_mask(len(y), 0.5, seeds.stream(seed, seeds.Purpose.SAMPLE))
  idx = np.flatnonzero(mask.numpy())
  assert res.batch_size.numpy() == len(idx)
  grads = dp_sgd.per_example_gradients(model, tf.gather(x, idx), tf.gather(y, idx))
  clipped, _ = dp_sgd.clip_per_example(grads, 0.1)
  for got, g in zip(res.noisy_sum, clipped):
    np.testing.assert_allclose(got.numpy(), tf.reduce_sum(g, 0).numpy(), rtol=1e-4, atol=1e-6)


def test_empty_poisson_batch_gives_pure_noise(model_and_data):
  model, x, y = model_and_data
  res = dp_sgd.noisy_clipped_sum(
    model,
    x[:0],
    y[:0],
    sampling_prob=0.5,
    l2_norm_clip=1.0,
    noise_stddev=0.0,
    seed=tf.constant([1, 1], tf.int64),
  )
  assert res.batch_size.numpy() == 0
  assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in res.noisy_sum)


def test_sampling_rate_is_q():
  n, q = 200_000, 0.03425
  mask = dp_sgd.poisson_mask(n, q, tf.constant([5, 6], tf.int64)).numpy()
  # Binomial(n, q): 5 standard deviations.
  assert abs(mask.mean() - q) < 5 * np.sqrt(q * (1 - q) / n)


def test_noise_std_and_seed_determinism():
  std, seed = 0.37, tf.constant([9, 9], tf.int64)
  query = dp_sgd.SeededGaussianSumQuery(1.0, std, seed)
  zeros = [tf.zeros([200, 100]), tf.zeros([5000])]
  noised, _, event = query.get_noised_result(zeros, query.initial_global_state())
  flat = np.concatenate([n.numpy().ravel() for n in noised])
  # Sample std of 25000 normals: relative error ~ 1/sqrt(2n) = 0.45 %.
  assert flat.std() == pytest.approx(std, rel=0.03)
  assert abs(flat.mean()) < 5 * std / np.sqrt(flat.size)
  again, _, _ = query.get_noised_result(zeros, query.initial_global_state())
  np.testing.assert_array_equal(noised[0].numpy(), again[0].numpy())
  assert float(event.noise_multiplier) == pytest.approx(std)


def test_hardened_noise_has_the_same_law_and_event():
  """Four float64 draws summed (Holohan and Braghin; Opacus secure_mode): N(0, std^2)."""
  std, seed = 0.37, tf.constant([9, 9], tf.int64)
  plain = dp_sgd.SeededGaussianSumQuery(1.0, std, seed)
  hard = dp_sgd.SeededGaussianSumQuery(1.0, std, seed, draws=4)
  zeros = [tf.zeros([200, 100]), tf.zeros([5000])]
  a, _, _ = plain.get_noised_result(zeros, plain.initial_global_state())
  b, _, event = hard.get_noised_result(zeros, hard.initial_global_state())
  flat = np.concatenate([n.numpy().ravel() for n in b])
  assert flat.std() == pytest.approx(std, rel=0.03)
  assert abs(flat.mean()) < 5 * std / np.sqrt(flat.size)
  # Kurtosis of a Gaussian: 3 (a sum of four uniforms, say, would give 2.7).
  assert np.mean(flat**4) / np.mean(flat**2) ** 2 == pytest.approx(3.0, abs=0.15)
  assert not np.array_equal(a[0].numpy(), b[0].numpy())  # other draws
  assert float(event.noise_multiplier) == pytest.approx(std)


def test_momentum_step_matches_torch_sgd_formula():
  w, v, g = [np.array([1.0])], [np.array([0.5])], [np.array([2.0])]
  new_w, new_v = dp_sgd.momentum_step(w, v, g, learning_rate=0.1, momentum=0.9)
  assert new_v[0][0] == pytest.approx(0.9 * 0.5 + 2.0)
  assert new_w[0][0] == pytest.approx(1.0 - 0.1 * 2.45)
