"""Secure sum: range, bit width, quantisation error, clipping counted (via TFF)."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import aggregation
from dopamine_tff import quantization


def _secure_sum(config, values):
  value_type = [tff.TensorType(np.float32, [len(values[0])])]
  proc = aggregation.QuantizedSecureSumFactory(config).create(tff.types.to_type(value_type))

  @tff.federated_computation(
    tff.FederatedType(proc.next.type_signature.parameter[1].member, tff.CLIENTS)
  )
  def total(v):
    out = proc.next(proc.initialize(), v)
    return out.result, out.measurements

  result, meas = total([[np.asarray(v, np.float32)] for v in values])
  return np.asarray(result[0]), meas


def test_quantisation_error_far_below_dp_noise(tff_runtime):
  # A Dopamine round of the paper's FSCDP: C=2, sigma=1.15, K=10, ~10 examples.
  k, clip, sigma = 10, 2.0, 1.15
  share = sigma * clip / math.sqrt(k)
  bound = aggregation.default_bound(l2_norm_clip=clip, expected_batch=10, noise_stddev=share)
  config = quantization.QuantizationConfig(bound, max_summands=k)
  rng = np.random.default_rng(0)
  values = [rng.normal(0, share, 2000) + rng.uniform(-1, 1, 2000) for _ in range(k)]
  result, meas = _secure_sum(config, values)
  exact = np.sum(np.array(values, np.float64), axis=0)
  err = result.astype(np.float64) - exact
  noise_std_of_sum = sigma * clip
  assert np.std(err) < 0.01 * noise_std_of_sum
  assert np.abs(err).max() <= k * config.step / 2 + 1e-5 * np.abs(exact).max()
  assert meas["secure_clipped_count"] == 0 and meas["secure_summands"] == k
  assert meas["secure_bits"] == config.bits == 27


def test_out_of_range_values_are_clipped_and_counted_not_wrapped(tff_runtime):
  config = quantization.QuantizationConfig(1.0, max_summands=4)
  result, meas = _secure_sum(config, [[5.0, 0.5, -3.0], [0.2, 0.2, 0.2]])
  np.testing.assert_allclose(result, [1.2, 0.7, -0.8], atol=1e-6)
  assert meas["secure_clipped_count"] == 2


def test_sum_of_max_summands_extreme_codes_does_not_overflow():
  config = quantization.QuantizationConfig(3.0, max_summands=1000)
  codes, clipped = quantization.encode([tf.fill([4], 3.0)], config)
  assert int(clipped) == 0
  total = int(codes[0][0]) * 1000
  assert total < 2**31
  decoded = quantization.decode([tf.constant([total], tf.int64)], 1000, config)
  assert float(decoded[0][0]) == pytest.approx(3000.0, rel=1e-6)


def test_in_process_sum_equals_factory(tff_runtime):
  config = quantization.QuantizationConfig(2.0, max_summands=3)
  rng = np.random.default_rng(1)
  values = [rng.normal(0, 0.5, 50).astype(np.float32) for _ in range(3)]
  result, _ = _secure_sum(config, values)
  encoded = [quantization.encode([tf.constant(v)], config) for v in values]
  in_process, clipped, n = aggregation.sum_in_process(encoded, config)
  np.testing.assert_array_equal(result, in_process[0].numpy())
  assert (clipped, n) == (0, 3)


def test_describe_states_range_bits_and_step():
  config = quantization.QuantizationConfig(4.0, max_summands=10)
  text = config.describe()
  assert "[-4, 4]" in text and "27-bit" in text and "no wrap-around" in text
  assert config.step == pytest.approx(8.0 / (2**27 - 1))


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_bound(bound):
  with pytest.raises(ValueError, match="bound"):
    quantization.QuantizationConfig(bound)


def test_non_float_values_are_refused():
  with pytest.raises(TypeError, match="float32"):
    aggregation.QuantizedSecureSumFactory(quantization.QuantizationConfig(1.0)).create(
      tff.TensorType(np.int32)
    )
