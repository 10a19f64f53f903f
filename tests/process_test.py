"""TFF processes: types, exactness with zero noise, noise statistics."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import dp_sgd
from dopamine_tff import models
from dopamine_tff import process
from dopamine_tff import quantization
from dopamine_tff import seeds

SHAPE, CLASSES = (8, 8, 1), 4


def _hospitals(k, n=20, seed=0):
  rng = np.random.default_rng(seed)
  return [
    (rng.normal(size=(n, *SHAPE)).astype(np.float32), rng.integers(0, CLASSES, n).astype(np.int32))
    for _ in range(k)
  ]


def _datasets(hospitals):
  # One element each: the hospital's whole local set, as its shard holds it.
  return [tf.data.Dataset.from_tensors(h) for h in hospitals]


def _model_fn():
  return models.small_cnn(SHAPE, CLASSES)


W0 = models.initial_weights("small_cnn", SHAPE, CLASSES, seed=0)


def _dp_process(q, clip, share, lr, momentum=0.0, bound=1e4, k=3):
  params = process.DpSgdParams(q, clip, share, lr, momentum)
  proc = process.build_dp_sgd_process(
    _model_fn,
    W0,
    SHAPE,
    params,
    quantization.QuantizationConfig(bound, max_summands=8),
    dither_degree=k - 1,
  )
  return _WithDither(proc, k)


class _WithDither:
  """The process with every hospital delivering: complete dither graph, no correction."""

  def __init__(self, proc, k):
    self.proc, self.k = proc, k
    self.initialize = proc.initialize

  def next(self, state, datasets, keys):
    k = self.k
    others = [[j for j in range(k) if j != i] for i in range(k)]
    words = sum(np.size(w) for w in W0)
    dithers = [
      quantization.host_dither(
        [seeds.pair_key(0, 0, i, j) for j in o], [1 if i < j else -1 for j in o], words
      )
      for i, o in enumerate(others)
    ]
    return self.proc.next(state, np.zeros(words), datasets, keys, dithers)


def test_types_are_derived_and_placed(tff_runtime):
  proc = _dp_process(0.5, 1.0, 0.1, 0.1).proc
  sig = proc.next.type_signature
  state_t, correction_t, data_t, seed_t, dither_t = sig.parameter
  assert dither_t.placement == tff.CLIENTS and correction_t.placement == tff.SERVER
  assert state_t.placement == tff.SERVER and data_t.placement == tff.CLIENTS
  assert seed_t.placement == tff.CLIENTS and not data_t.all_equal
  assert sig.result[0].is_equivalent_to(state_t)
  assert len(state_t.member.weights) == len(W0)
  assert "secure_clipped_count" in str(sig.result[1])


def test_zero_noise_round_is_one_sgd_step_on_the_union_of_samples(tff_runtime):
  k, q, lr = 3, 0.4, 0.05
  hospitals = _hospitals(k)
  proc = _dp_process(q, 1e6, 0.0, lr, bound=100.0)
  state = proc.initialize()
  keys = [seeds.client_key(11, 0, c) for c in range(k)]
  state, meas = proc.next(state, _datasets(hospitals), keys)
  assert meas["secure_clipped_count"] == 0
  # Reference: the same Poisson draws, plain gradient of the summed loss.
  xs, ys = [], []
  for (x, y), s in zip(hospitals, keys):
    seed = seeds.stream(s, seeds.Purpose.SAMPLE)
    mask = dp_sgd.poisson_mask(len(y), q, seed).numpy()
    xs.append(x[mask])
    ys.append(y[mask])
  x, y = np.concatenate(xs), np.concatenate(ys)
  assert 0 < len(y) < k * 20
  model = _model_fn()
  dp_sgd.assign_weights(model, W0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(dp_sgd.loss_per_example(model(x), y)) / (q * k * 20)
  grads = tape.gradient(loss, model.trainable_variables)
  for got, w, g in zip(state.weights, W0, grads):
    np.testing.assert_allclose(got, w - lr * g.numpy(), rtol=1e-4, atol=1e-6)


def _pure_noise_delta(k_clients, share):
  """Runs a round whose batches are (almost surely) empty; returns -delta."""
  q, n = 1e-9, 20
  proc = _dp_process(q, 1.0, share, lr=q * n * k_clients, k=k_clients)
  state0 = proc.initialize()
  hospitals = _hospitals(k_clients, n)
  keys = [seeds.client_key(5, 0, c) for c in range(k_clients)]
  state, _ = proc.next(state0, _datasets(hospitals), keys)
  return np.concatenate([(w0 - w).ravel() for w0, w in zip(state0.weights, state.weights)])


def test_hospital_share_std_and_sum_std(tff_runtime):
  sigma, clip, k = 1.15, 2.0, 4
  share = sigma * clip / math.sqrt(k)
  one = _pure_noise_delta(1, share)
  total = _pure_noise_delta(k, share)
  # ~12k coordinates each: sample std within 3 %.
  assert one.std() == pytest.approx(share, rel=0.03)
  assert total.std() == pytest.approx(sigma * clip, rel=0.03)
  assert abs(total.mean()) < 5 * sigma * clip / math.sqrt(total.size)


def test_fedavg_moves_weights_and_fpdp_differs(tff_runtime):
  hospitals = _hospitals(2)
  keys = [seeds.client_key(1, 0, c) for c in range(2)]
  outs = []
  for dp in (None, 1.0):
    params = process.LocalParams(1, 8, 0.1, 0.0, dp, 1.0)
    proc = process.build_fedavg_process(_model_fn, W0, SHAPE, params)
    state, _ = proc.next(proc.initialize(), _datasets(hospitals), keys)
    outs.append(state.weights)
  for plain, private, w0 in zip(*outs, W0):
    assert not np.allclose(plain, w0)
    assert not np.allclose(plain, private)


def test_fedavg_single_client_equals_local_sgd(tff_runtime):
  """K=1, E=1: the round equals one epoch of local minibatch SGD (setting C)."""
  ((x, y),) = _hospitals(1, 16)
  params = process.LocalParams(1, 8, 0.1, 0.5)
  proc = process.build_fedavg_process(_model_fn, W0, SHAPE, params)
  seed = seeds.client_key(2, 0, 0)
  state, _ = proc.next(proc.initialize(), _datasets([(x, y)]), [seed])
  order = tf.argsort(
    tf.random.stateless_uniform([16], seeds.stream(seed, seeds.Purpose.SHUFFLE, 0))
  ).numpy()
  model = _model_fn()
  dp_sgd.assign_weights(model, W0)
  w, v = [np.array(a) for a in W0], [np.zeros_like(a) for a in W0]
  for b in range(2):
    idx = order[b * 8 : (b + 1) * 8]
    dp_sgd.assign_weights(model, w)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(dp_sgd.loss_per_example(model(x[idx]), y[idx]))
    g = [t.numpy() for t in tape.gradient(loss, model.trainable_variables)]
    w, v = dp_sgd.momentum_step(w, v, g, learning_rate=0.1, momentum=0.5)
  for got, ref in zip(state.weights, w):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
