"""Fixed-point encoding: no wrap-around for any K, every change counted, true error."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import aggregation
from dopamine_tff import quantization

F32 = np.float32


def _edge_values(bound):
  below = np.nextafter(F32(bound), F32(0))  # the largest float32 inside the range
  return np.array(
    [bound, -bound, below, -below, 50 * bound, -50 * bound, np.inf, -np.inf, 0.0, 3e38], F32
  )


def _sum_of_k(codes, k):
  """K hospitals' codes added in int32, as the runtimes add them."""
  return [tf.add_n([c] * k) for c in codes]


def test_codes_stay_in_range_for_float32_values_at_the_top():
  # In float32, 2.0**bits - 1 rounds up to 2**bits for bits > 24: the old clamp.
  for k in (1, 2, 4, 1024):
    cfg = quantization.QuantizationConfig(10.0, max_summands=k)
    codes, _ = quantization.encode([tf.constant(_edge_values(10.0))], cfg)
    c = codes[0].numpy().astype(np.int64)
    assert c.min() >= 0 and c.max() <= 2**cfg.bits - 1, k


def test_review_case_k2_bound10_decodes_without_wrap():
  cfg = quantization.QuantizationConfig(10.0, max_summands=2)
  v = tf.constant([10.0, 50.0, 9.9999995], tf.float32)
  encoded = [quantization.encode([v], cfg) for _ in range(2)]
  total, changed, n = aggregation.sum_in_process(encoded, cfg)
  np.testing.assert_allclose(total[0].numpy(), [20.0, 20.0, 20.0], atol=1e-5)
  assert n == 2 and changed == 2  # 50 was clipped, at each hospital


@pytest.mark.parametrize("bound", [1e-3, 10.0, 53.659, 1e6])
def test_every_k_from_1_to_1024_sums_both_ends_without_wrap(bound):
  values = _edge_values(bound)
  wide = values.astype(np.float64)
  expected_one = np.clip(wide, -bound, bound)
  # +-50 bound, +-inf, 3e38, and +-bound itself when float32 rounds it outward.
  expected_changed = int(np.sum(np.abs(wide) > bound))
  assert 5 <= expected_changed <= 7
  encoded = {}  # the code width changes only at powers of two
  for k in range(1, 1025):
    cfg = quantization.QuantizationConfig(bound, max_summands=k)
    assert k * (2**cfg.bits - 1) < 2**31
    if cfg.bits not in encoded:
      encoded[cfg.bits] = quantization.encode([tf.constant(values)], cfg)
    codes, changed = encoded[cfg.bits]
    assert int(changed) == expected_changed
    decoded = quantization.decode(_sum_of_k(codes, k), k, cfg, dtype=tf.float64)[0].numpy()
    tol = k * cfg.step / 2 + 1e-12 * k * bound
    np.testing.assert_allclose(decoded, k * expected_one, rtol=0, atol=tol, err_msg=f"K={k}")


def test_nan_is_encoded_as_zero_and_counted():
  cfg = quantization.QuantizationConfig(1.0, max_summands=4)
  codes, changed = quantization.encode([tf.constant([np.nan, 0.5], tf.float32)], cfg)
  out = quantization.decode(codes, 1, cfg, dtype=tf.float64)[0].numpy()
  np.testing.assert_allclose(out, [0.0, 0.5], atol=cfg.step)
  assert int(changed) == 1


@pytest.mark.parametrize("bound,k", [(53.659, 10), (4.0, 1), (4.0, 1000)])
def test_measured_rounding_error_is_the_stated_one(bound, k):
  """The encoding error is uniform on one step: std step/sqrt(12), max step/2."""
  cfg = quantization.QuantizationConfig(bound, max_summands=k)
  rng = np.random.default_rng(0)
  v = rng.uniform(-bound, bound, 200_000).astype(F32)
  codes, changed = quantization.encode([tf.constant(v)], cfg)
  assert int(changed) == 0
  err = quantization.decode(codes, 1, cfg, dtype=tf.float64)[0].numpy() - v.astype(np.float64)
  assert np.std(err) == pytest.approx(cfg.error_std, rel=0.03)
  assert np.abs(err).max() <= cfg.step / 2 * (1 + 1e-6)
  # What reaches the model adds float32's rounding of the result.
  err32 = quantization.decode(codes, 1, cfg)[0].numpy().astype(np.float64) - v
  assert np.abs(err32).max() <= cfg.step / 2 + bound * 2.0**-24


def test_error_std_formula():
  cfg = quantization.QuantizationConfig(53.659, max_summands=10)
  assert cfg.bits == 27
  assert cfg.error_std == pytest.approx(2 * 53.659 / (2**27 - 1) / math.sqrt(12))
