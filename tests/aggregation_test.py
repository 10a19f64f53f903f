"""The modular secure-sum factory: types, exact sums mod 2**32, the encoding end to end (via TFF)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import aggregation
from dopamine_tff import quantization


def _factory_sum(values):
  value_type = tff.TensorType(np.int64, [len(values[0])])
  proc = aggregation.ModularSecureSumFactory().create(value_type)

  @tff.federated_computation(tff.FederatedType(value_type, tff.CLIENTS))
  def total(v):
    return proc.next(proc.initialize(), v).result

  return np.asarray(total([np.asarray(v, np.int64) for v in values]))


def test_sum_is_exact_mod_2_32_at_the_top_of_the_code_range(tff_runtime):
  top = 2**32 - 1
  values = [[top, 0, 5, top], [top, 1, 7, 1], [top, 2, 11, 0]]
  expected = np.mod(np.sum(np.array(values, np.int64), axis=0), 2**32)
  got = _factory_sum(values)
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(aggregation.sum_in_process(values), expected)


def test_encoded_updates_decode_to_their_sum_through_tff(tff_runtime):
  k, n = 4, 3000
  cfg = quantization.QuantizationConfig(60.0, max_summands=k)
  rng = np.random.default_rng(0)
  shares = rng.normal(0, 5, (k, n)).astype(np.float32)
  v = rng.integers(0, quantization.DITHER_ONE, (k - 1, n))  # fixed point, r = R / 2**52
  dithers = np.zeros((k, n), np.int64)
  for e in range(k - 1):  # a path graph: zero-sum dithers
    dithers[e] += v[e]
    dithers[e + 1] -= v[e]
  codes = [
    quantization.encode([tf.constant(s)], d, cfg)[0].numpy() for s, d in zip(shares, dithers)
  ]
  total = _factory_sum(codes)
  decoded = quantization.decode(total, np.zeros(n), cfg, dtype=tf.float64).numpy()
  exact = shares.astype(np.float64).sum(axis=0)
  assert np.abs(decoded - exact).max() <= cfg.error_bound


def test_non_int64_values_are_refused():
  with pytest.raises(TypeError, match="int64"):
    aggregation.ModularSecureSumFactory().create(tff.TensorType(np.float32, [3]))
