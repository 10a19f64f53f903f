"""The secure-sum encoding: exact mod 2**32 sums, input-independent error, overflow bound."""

import math

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from dopamine_tff import quantization
from dopamine_tff import seeds


def _path_dithers(k, n, rng):
  """Zero-sum fixed-point dithers of a path graph 0-1-...-(k-1): R_k = V_k - V_(k-1)
  with V uniform on {0, ..., 2**52 - 1} (r = R / 2**52), as host_dither makes them."""
  v = rng.integers(0, quantization.DITHER_ONE, (max(k - 1, 0), n))
  r = np.zeros((k, n), np.int64)
  for e in range(k - 1):
    r[e] += v[e]
    r[e + 1] -= v[e]
  return r


def _sum_decode(shares, dithers, cfg):
  """Encodes every hospital's share, adds the codes mod 2**32, decodes."""
  k, n = shares.shape
  codes, changed = quantization.encode([tf.constant(shares.ravel())], dithers.ravel(), cfg)
  total = codes.numpy().reshape(k, n).sum(axis=0)
  return quantization.decode(total, np.zeros(n), cfg, dtype=tf.float64).numpy(), int(changed)


def test_codes_are_in_range_and_single_shares_may_wrap_harmlessly():
  cfg = quantization.QuantizationConfig(10.0, max_summands=2)
  shares = np.array([[1e4, 5.0, -3.0], [-1e4 + 1.0, 4.0, 3.0]])  # shares far beyond the range
  dithers = _path_dithers(2, 3, np.random.default_rng(0))
  codes, _ = quantization.encode([tf.constant(shares.ravel())], dithers.ravel(), cfg)
  assert codes.numpy().min() >= 0 and codes.numpy().max() < 2**32
  decoded, changed = _sum_decode(shares, dithers, cfg)
  np.testing.assert_allclose(decoded, [1.0, 9.0, 0.0], atol=cfg.error_bound + 1e-9)
  assert changed == 0


@pytest.mark.parametrize("bound", [1e-3, 10.0, 53.659, 1e6])
def test_every_k_from_1_to_1024_sums_at_both_ends_without_wrap(bound):
  rng = np.random.default_rng(1)
  for k in range(1, 1025):
    cfg = quantization.QuantizationConfig(bound, max_summands=k)
    edge = cfg.safe_bound * (1 - 1e-9)
    totals = np.array([edge, -edge, 0.0, 0.5 * bound, -cfg.step / 3])
    # Uneven splits: shares well outside the range, summing to the total.
    spread = rng.normal(0, 100 * bound, (k, totals.size))
    spread -= spread.mean(axis=0)
    shares = totals / k + spread
    decoded, _ = _sum_decode(shares, _path_dithers(k, totals.size, rng), cfg)
    tol = cfg.error_bound + 1e-9 * bound * k * 100
    np.testing.assert_allclose(decoded, shares.sum(axis=0), rtol=0, atol=tol, err_msg=f"K={k}")


def test_beyond_the_range_the_sum_wraps_which_the_overflow_bound_covers():
  cfg = quantization.QuantizationConfig(1.0, max_summands=1)
  decoded, _ = _sum_decode(np.array([[1.01]]), np.zeros((1, 1), np.int64), cfg)
  assert decoded[0] == pytest.approx(1.01 - 2.0, abs=1e-6)


def test_decode_error_depends_on_the_total_only_not_on_the_split():
  """Two hospitals, the same total split two ways, many dither draws.

  With the zero-sum dither the error distributions agree (two-sample KS).
  Per-share rounding without dither (as before) fails the same test.
  """
  cfg = quantization.QuantizationConfig(1.0, max_summands=2)
  s, n = cfg.step, 20_000
  total = 0.3 * s
  splits = {"even": (total / 2, total / 2), "skewed": (total / 2 + 0.45 * s, total / 2 - 0.45 * s)}
  rng = np.random.default_rng(2)

  def errors(split, dithered):
    shares = np.array([np.full(n, split[0]), np.full(n, split[1])])
    r = _path_dithers(2, n, rng) if dithered else np.zeros((2, n), np.int64)
    decoded, _ = _sum_decode(shares, r, cfg)
    return (decoded - total) / s

  ours = [errors(sp, True) for sp in splits.values()]
  assert stats.ks_2samp(*ours).pvalue > 1e-3
  assert abs(np.mean(ours[0])) < 0.05  # about unbiased
  plain = [errors(sp, False) for sp in splits.values()]
  assert stats.ks_2samp(*plain).pvalue < 1e-12  # the test can fail


def test_library_dither_is_zero_sum_over_a_complete_graph():
  k, n = 5, 20_000
  total = np.zeros(n, np.int64)
  for i in range(k):
    others = [j for j in range(k) if j != i]
    keys = np.array([seeds.pair_key(7, 3, i, j) for j in others])
    signs = np.array([1 if i < j else -1 for j in others], np.int32)
    fixed = quantization.host_dither(keys, signs, n)
    assert fixed.dtype == np.int64
    r = quantization.dither_value(fixed)
    assert np.abs(r).max() < k - 1
    assert np.std(r) == pytest.approx(math.sqrt((k - 1) / 12), rel=0.05)  # 4 +-uniforms
    total += fixed
  np.testing.assert_array_equal(total, 0)  # exactly, in integers


def test_host_dither_is_uniform_52_bit_chacha20_words():
  """Each partner's stream is the top 52 bits of the 64-bit words of its key's
  ChaCha20 keystream (RFC 8439 layout, nonce DITHER_NONCE)."""
  from dopamine_tff.secagg import chacha

  key = seeds.pair_key(1, 0, 0, 1)
  n = quantization._DITHER_CHUNK + 1000  # noqa: SLF001  (across a chunk's edge)
  one = quantization.host_dither([key], [1], n)
  words = chacha.keystream_words(
    tf.constant(key), tf.constant(quantization.DITHER_NONCE, tf.uint32), 2 * n
  ).numpy()
  expected = (words[0::2].astype(np.uint64) | (words[1::2].astype(np.uint64) << 32)) >> 12
  np.testing.assert_array_equal(one, expected.astype(np.int64))
  np.testing.assert_array_equal(quantization.host_dither([key], [-1], n), -one)
  assert one.min() >= 0 and one.max() < 2**52
  assert stats.kstest(one / 2.0**52, "uniform").pvalue > 1e-3
  # Two partners: the signed sum; no partner: zero.
  other = seeds.pair_key(1, 0, 0, 2)
  np.testing.assert_array_equal(
    quantization.host_dither([key, other], [1, -1], n),
    one - quantization.host_dither([other], [1], n),
  )
  np.testing.assert_array_equal(quantization.host_dither(np.zeros([0, 8]), [], n), 0)


def test_non_finite_values_are_encoded_as_zero_and_counted():
  cfg = quantization.QuantizationConfig(1.0, max_summands=1)
  decoded, changed = _sum_decode(np.array([[np.nan, np.inf, 0.5]]), np.zeros((1, 3)), cfg)
  np.testing.assert_allclose(decoded, [0.0, 0.0, 0.5], atol=cfg.step)
  assert changed == 2


def test_measured_error_matches_the_stated_bound_and_std():
  k, n = 10, 50_000
  cfg = quantization.QuantizationConfig(53.659, max_summands=k)
  rng = np.random.default_rng(3)
  shares = rng.uniform(-5, 5, (k, n))
  decoded, _ = _sum_decode(shares, _path_dithers(k, n, rng), cfg)
  err = decoded - shares.sum(axis=0)
  assert np.abs(err).max() <= cfg.error_bound
  assert 0.5 * cfg.error_std < np.std(err) < 1.5 * cfg.error_std


def test_overflow_bound_holds_in_a_worst_case_simulation():
  """Every sampled example pushes every coordinate up by C: the worst data."""
  n_ex, q, clip, sigma, dim, rounds = 200, 0.1, 1.0, 1.0, 500, 4000
  # A range whose bound is about 5 %: large enough to observe overflows.
  lo, hi = 1.0, 100.0
  for _ in range(60):
    mid = (lo + hi) / 2
    cfg = quantization.QuantizationConfig(mid, max_summands=1)
    p = quantization.overflow_probability(
      cfg, l2_norm_clip=clip, num_examples=n_ex, sampling_prob=q, noise_std=sigma, dim=dim
    )
    lo, hi = (mid, hi) if p > 0.05 else (lo, mid)
  cfg = quantization.QuantizationConfig(hi, max_summands=1)
  p = quantization.overflow_probability(
    cfg, l2_norm_clip=clip, num_examples=n_ex, sampling_prob=q, noise_std=sigma, dim=dim
  )
  assert 0.01 < p <= 0.05
  rng = np.random.default_rng(4)
  batch = rng.binomial(n_ex, q, rounds)
  totals = clip * batch[:, None] + rng.normal(0, sigma, (rounds, dim))
  decoded, _ = _sum_decode(totals.reshape(1, -1), np.zeros((1, totals.size)), cfg)
  wrapped = np.abs(decoded.reshape(rounds, dim) - totals) > 1e-6
  rate = wrapped.any(axis=1).mean()
  assert rate <= p + 3 * math.sqrt(p / rounds)
  assert rate > 0  # the simulation does reach the range end


def test_default_bound_meets_its_target_at_the_paper_settings():
  kw = dict(l2_norm_clip=2.0, num_examples=2931, sampling_prob=0.03425, dim=725_061)
  bound = quantization.default_bound(noise_std=2.3, max_summands=10, target=1e-18, **kw)
  cfg = quantization.QuantizationConfig(bound, max_summands=10)
  assert quantization.overflow_probability(cfg, noise_std=2.3, **kw) <= 1e-18
  assert cfg.error_std < 1e-6 * 2.3  # far below the DP noise on the sum


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_bound(bound):
  with pytest.raises(ValueError, match="bound"):
    quantization.QuantizationConfig(bound)


def test_the_dither_keeps_its_precision_on_a_huge_share():
  """Issue 18: floor(y + r + 1/2) in float64 rounds the dither r to y's ulp (1/2
  near 2**51 steps); the code must be floor(y) + floor(frac(y) + r + 1/2) exactly."""
  from fractions import Fraction

  cfg = quantization.QuantizationConfig(2.0**31)  # step 1: y is the value
  rng = np.random.default_rng(5)
  y = 2.0**51 + rng.integers(0, 8, 400) * 0.5  # exactly representable, ulp 1/2
  fixed = rng.integers(-(2**53), 2**53, 400)  # r in [-2, 2) on the 2**-52 grid
  codes, changed = quantization.encode([tf.constant(y)], tf.constant(fixed), cfg)
  assert int(changed) == 0
  exact = [
    (int((Fraction(a) + Fraction(int(b), 2**52) + Fraction(1, 2)).__floor__())) % 2**32
    for a, b in zip(y, fixed)
  ]
  np.testing.assert_array_equal(codes.numpy(), exact)


def test_the_overflow_bound_covers_the_neighbour_with_one_more_example():
  """Delta must cover both data sets of a neighbouring pair: N and N + 1 examples."""
  cfg = quantization.QuantizationConfig(6.0, max_summands=4)
  kw = dict(l2_norm_clip=1.0, sampling_prob=0.5, noise_std=0.5, dim=10)
  both = quantization.overflow_probability(cfg, num_examples=8, **kw)
  at_n = quantization._overflow_at(cfg, 1.0, 8, 0.5, 0.5, 10)  # noqa: SLF001
  at_n1 = quantization._overflow_at(cfg, 1.0, 9, 0.5, 0.5, 10)  # noqa: SLF001
  assert at_n1 > at_n  # one more example can only make a wrap likelier
  assert both == max(at_n, at_n1)
