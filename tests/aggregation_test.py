"""Secure sum: range, quantisation error, clipping counted (run through TFF)."""

import math

import numpy as np
import pytest
import tensorflow_federated as tff

from dopamine_tff import aggregation


def _secure_sum(config, values, tff_runtime):
  del tff_runtime
  proc = aggregation.float_sum_factory(config).create(tff.TensorType(np.float32, [len(values[0])]))

  @tff.federated_computation(
    tff.FederatedType(tff.TensorType(np.float32, [len(values[0])]), tff.CLIENTS)
  )
  def total(v):
    out = proc.next(proc.initialize(), v)
    return out.result, out.measurements

  return total([np.asarray(v, np.float32) for v in values])


def test_quantisation_error_far_below_dp_noise(tff_runtime):
  # A Dopamine round of the paper's FSCDP: C=2, sigma=1.15, K=10, ~10 examples.
  k, clip, sigma = 10, 2.0, 1.15
  share = sigma * clip / math.sqrt(k)
  config = aggregation.SecureSumConfig(
    aggregation.default_bound(l2_norm_clip=clip, expected_batch=10, noise_stddev=share)
  )
  rng = np.random.default_rng(0)
  values = [rng.normal(0, share, 2000) + rng.uniform(-1, 1, 2000) for _ in range(k)]
  result, meas = _secure_sum(config, values, tff_runtime)
  exact = np.sum(np.array(values, np.float64), axis=0)
  err = np.asarray(result, np.float64) - exact
  noise_std_of_sum = sigma * clip
  # float32 arithmetic of the dequantisation adds ~1e-6 relative error too.
  assert np.std(err) < 0.01 * noise_std_of_sum
  assert np.abs(err).max() < 1e-3 * noise_std_of_sum
  assert meas["secure_upper_clipped_count"] == 0 and meas["secure_lower_clipped_count"] == 0
  assert config.error_std * math.sqrt(k) < 1e-6 * noise_std_of_sum


def test_out_of_range_values_are_clipped_and_counted(tff_runtime):
  config = aggregation.SecureSumConfig(1.0)
  result, meas = _secure_sum(config, [[5.0, 0.5, -3.0], [0.2, 0.2, 0.2]], tff_runtime)
  np.testing.assert_allclose(result, [1.2, 0.7, -0.8], atol=1e-6)
  assert meas["secure_upper_clipped_count"] == 1
  assert meas["secure_lower_clipped_count"] == 1


def test_describe_states_range_bits_and_step():
  text = aggregation.SecureSumConfig(4.0).describe()
  assert "[-4, 4]" in text and "32-bit" in text and "step" in text
  assert aggregation.SecureSumConfig(4.0).step == pytest.approx(8.0 / (2**32 - 1))


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_bound(bound):
  with pytest.raises(ValueError, match="bound"):
    aggregation.SecureSumConfig(bound)
