"""Fixed-point encoding of the hospitals' noisy updates for an integer sum mod 2**32.

The claim we need: what the server learns, the integer sum of the codes, is a
post-processing of the accounted mechanism (the Gaussian-noised total update)
plus data-independent randomness, except on an overflow event whose
probability is bounded and added to delta. The encoding that gives it:

* Range and step: the SUM of the hospitals' updates is represented on
  [-bound, bound) with step s = 2 bound / 2**32 (``QuantizationConfig``).
* Zero-sum pairwise dither: every pair of hospitals (i, j) shares a dither
  v_ij, uniform on [0, 1)^d, from a key the server does not hold; hospital k
  uses r_k = sum_j sign_kj v_kj with sign +1 towards higher ids and -1 towards
  lower ones, so sum_k r_k = 0 exactly over a round's participants.
* Code: c_k = floor(x_k / s + r_k + 1/2) mod 2**32, added mod 2**32. No
  per-share clipping: a share's code may wrap, only the sum matters.

Why it is exact. Write y_k = x_k / s. Then sum_k c_k = sum_k y_k + K/2 - F
with F = sum_k frac(y_k + r_k + 1/2). The vector (r_k mod 1) is uniform on the
sub-torus {sum = 0 mod 1} when the dither graph of the delivering hospitals is
connected (each edge is an independent uniform; the signed incidence map of a
connected graph onto that sub-torus is onto), so frac(y_k + r_k + 1/2) is
uniform on {sum = sum_k y_k + K/2 mod 1}: F, and therefore the decoded sum,
depends on the data only through sum_k y_k, the Gaussian mechanism's output
(scaled). Hospitals that drop after the dithers were drawn leave their pairs'
dithers in the survivors' codes; the server removes them exactly (their keys
are revealed with the dropped hospital's key in SecAgg) and the argument holds
for the survivors' sub-graph conditioned on what it was told. K = 1 is plain
deterministic rounding of the noised total: post-processing too. This holds in
exact arithmetic. The implementation: each v_ij is uniform on the 2**-52 grid
(52 bits of the pair's ChaCha20 keystream, made on the host: ``host_dither``),
r_k is held exactly as the integer R_k = 2**52 r_k, and the code is computed
as floor(y) + ((floor(2**52 frac(y)) + R_k + 2**51) >> 52) in int64, exact
integer arithmetic: the dither meets only the fraction (adding r to a y near
2**51 would round it to y's ulp), and frac(y) enters on the dither's grid,
which it already lies on for |y| >= 1 (float64 y), so the codes depend on the
data below that grid only for coordinates within a step of zero.

Decoding: S = sum of codes mod 2**32 read as a signed 32-bit value, minus the
correction for dropped hospitals' dithers, times s. The error is at most
(K/2) s per coordinate. The sum overflows (wraps) only when |sum_k x_k| comes
within K^2/4 + K/2 steps of the bound; ``overflow_probability`` bounds that
from the Poisson batch-size tail and the Gaussian noise tail, and the training
loop adds it, times the rounds run, to the reported delta.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats
import tensorflow as tf

from dopamine_tff import keystream

BITS = 32
MODULUS = 2**BITS
HALF = 2 ** (BITS - 1)
SUM_BITS = 31  # counts (examples, changed coordinates) are plain sums below 2**31
_MAX_EXACT = 2.0**52  # beyond this float64 cannot hold the fraction
DITHER_BITS = 52  # the dither's fixed point: r = R / 2**52
DITHER_ONE = 2**DITHER_BITS
DITHER_NONCE = (2, 0, 0)  # the pair's dither key is its own; the nonce separates uses
_DITHER_CHUNK = 2**15  # coordinates per pass (a multiple of 8: whole ChaCha20 blocks)


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
  """Range of the secure sum.

  Attributes:
    bound: the sum over hospitals of each coordinate is represented on
      [-bound, bound) (step 2 bound / 2**32).
    max_summands: the most hospitals in one sum (bounds the rounding error
      and the margin kept below the range ends).
  """

  bound: float
  max_summands: int = 1024

  def __post_init__(self):
    if not (self.bound > 0 and math.isfinite(self.bound)):
      raise ValueError(f"secure-sum bound must be finite and > 0, got {self.bound}")
    if not 1 <= self.max_summands <= 2**14:
      raise ValueError(f"max_summands must be in [1, 2**14], got {self.max_summands}")

  @property
  def step(self) -> float:
    return 2.0 * self.bound / MODULUS

  @property
  def safe_bound(self) -> float:
    """|sum| below this never wraps, whatever the dithers and dropouts."""
    k = self.max_summands
    return self.bound * (1.0 - (k * k / 4 + k / 2 + 1) / HALF)

  @property
  def error_bound(self) -> float:
    """Largest decoding error of a coordinate of the sum."""
    return self.max_summands / 2 * self.step

  @property
  def error_std(self) -> float:
    """Std of the decoding error of the sum of K dithered codes (K/12 steps^2)."""
    return self.step * math.sqrt(self.max_summands / 12.0)

  def describe(self) -> str:
    return (
      f"secure sum: sum range [-{self.bound:.6g}, {self.bound:.6g}) mod 2^32 with zero-sum "
      f"pairwise dither, step {self.step:.3g}, error at most {self.error_bound:.3g} "
      f"(std about {self.error_std:.3g}) for up to {self.max_summands} hospitals"
    )


def host_dither(keys, signs, num_words: int) -> np.ndarray:
  """R = sum_j signs[j] U_j: a hospital's dither r = R / 2**52 in fixed point, int64 [n].

  U_j is uniform on {0, ..., 2**52 - 1}: the top 52 bits of each 64-bit word
  of the ChaCha20 keystream keyed by keys[j] (the pair's 256-bit key, fresh
  each round), so v_j = U_j / 2**52 is uniform on [0, 1) on a 2**-52 grid (the
  float64 uniform's own grid). The sum is exact in int64 for fewer than 2**10
  partners. Made on the hospital's host (OpenSSL, memory speed): it does not
  depend on the data.

  Args:
    keys: uint32 [M, 8], one ChaCha20 key per partner.
    signs: M signs, +1 or -1.
  """
  keys = np.asarray(keys, np.uint32).reshape(-1, keystream.KEY_WORDS)
  if len(keys) >= 2**10:
    raise ValueError(f"{len(keys)} dither partners: the int64 sum holds fewer than 2**10")
  total = np.zeros(num_words, np.int64)
  buf = np.empty(min(_DITHER_CHUNK, num_words), "<u8")
  # Chunk by chunk, so the keystream and the sum stay in the cache (1.3x).
  for start in range(0, num_words, _DITHER_CHUNK):
    part, acc = buf[: min(_DITHER_CHUNK, num_words - start)], total[start : start + _DITHER_CHUNK]
    for key, sign in zip(keys, signs):
      # Two words per coordinate: 16-word blocks, block counter start / 8.
      keystream.words(
        key, DITHER_NONCE, 2 * part.size, out=part.view(np.uint32), counter=start // 8
      )
      np.right_shift(part, 64 - DITHER_BITS, out=part)
      (np.add if sign > 0 else np.subtract)(acc, part.view(np.int64), out=acc)
  return total


def dither_value(fixed) -> np.ndarray:
  """The dither r (float64) of `host_dither`'s fixed-point R (rounded beyond 2**53)."""
  return np.asarray(fixed, np.int64).astype(np.float64) / DITHER_ONE


def flatten(values):
  return tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], axis=0)


def unflatten(flat, shapes):
  sizes = [int(tf.TensorShape(s).num_elements()) for s in shapes]
  return [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]


def encode(values, dither, config: QuantizationConfig):
  """Codes of a hospital's update (list of float tensors) under its dither.

  Args:
    values: the update's tensors.
    dither: int64 [n], the fixed-point dither R of `host_dither` (r = R / 2**52).

  Returns:
    (int64 [n] codes in [0, 2**32), int32 count of coordinates changed beyond
    rounding: non-finite or beyond 2**52 steps, encoded as 0).
  """
  if all(v.dtype == tf.float32 for v in values):  # one float64 pass, not one per variable
    y = tf.cast(tf.concat([tf.reshape(v, [-1]) for v in values], 0), tf.float64)
  else:
    y = flatten(values)
  y = y / config.step
  ok = tf.abs(y) < _MAX_EXACT  # False also for NaN
  y = tf.where(ok, y, 0.0)
  # c = floor(y) + floor(frac(y) + r + 1/2), the second term in integers:
  # frac(y) on the dither's 2**-52 grid (exact: y - floor(y) and the scaling
  # by 2**52 are exact in float64), plus R and one half, arithmetic shift
  # right by 52. The dither meets only the fraction, so it keeps its full
  # precision however large the share y is. Every term is an integer below
  # 2**63; mod 2**32 is the low 32 bits of the two's complement.
  whole = tf.floor(y)
  frac = tf.cast((y - whole) * DITHER_ONE, tf.int64)
  carry = tf.bitwise.right_shift(frac + tf.cast(dither, tf.int64) + DITHER_ONE // 2, DITHER_BITS)
  code = tf.cast(whole, tf.int64) + carry
  changed = tf.size(ok) - tf.math.count_nonzero(ok, dtype=tf.int32)
  return tf.bitwise.bitwise_and(code, MODULUS - 1), changed


def decode(code_sum, correction, config: QuantizationConfig, dtype=tf.float32):
  """The sum of the hospitals' updates from the sum of their codes.

  Args:
    code_sum: int64 [n], the codes' sum (any integer; reduced mod 2**32).
    correction: float64 [n], the dropped hospitals' pair dithers still in the
      sum, in steps (`dither_value`; 0 when every participant delivered).
  """
  s = tf.math.floormod(tf.cast(code_sum, tf.int64), MODULUS)
  signed = tf.where(s >= HALF, s - MODULUS, s)
  return tf.cast((tf.cast(signed, tf.float64) - correction) * config.step, dtype)


def overflow_probability(
  config: QuantizationConfig,
  *,
  l2_norm_clip: float,
  num_examples: int,
  sampling_prob: float,
  noise_std: float,
  dim: int,
) -> float:
  """An upper bound on the chance that one round's sum wraps around.

  A coordinate of the total is at most C * B in size (B, the Poisson batch
  over all hospitals, Binomial(N, q)) plus Gaussian noise of std noise_std.
  For any b: P(wrap) <= P(B > b) + dim * 2 * Phi_bar((safe_bound - C b) /
  noise_std); the smallest such bound over b is returned. It holds for every
  data set of N examples and, taken at N + 1 as well (the larger is
  returned), for its neighbours with one more: the delta the overflow adds
  must cover both sides of the DP inequality.
  """
  return max(
    _overflow_at(config, l2_norm_clip, n, sampling_prob, noise_std, dim)
    for n in (num_examples, num_examples + 1)
  )


def _overflow_at(config, l2_norm_clip, num_examples, sampling_prob, noise_std, dim) -> float:
  b = np.arange(num_examples + 1)
  room = config.safe_bound - l2_norm_clip * b
  ok = room > 0
  if not ok.any():
    return 1.0
  b, room = b[ok], room[ok]
  tail = stats.binom.sf(b, num_examples, sampling_prob)
  if noise_std > 0:
    noise = np.minimum(1.0, dim * 2 * stats.norm.sf(room / noise_std))
  else:
    noise = np.zeros_like(tail)
  return float(min(1.0, np.min(tail + noise)))


def batch_quantile(num_examples: int, sampling_prob: float, tail: float) -> int:
  """The smallest b with P(Binomial(N, q) > b) <= tail (log-space search;
  scipy's isf is inexact this far out)."""
  lo, hi, log_tail = 0, num_examples, math.log(tail)
  while lo < hi:
    mid = (lo + hi) // 2
    if stats.binom.logsf(mid, num_examples, sampling_prob) <= log_tail:
      hi = mid
    else:
      lo = mid + 1
  return lo


def default_bound(
  *,
  l2_norm_clip: float,
  num_examples: int,
  sampling_prob: float,
  noise_std: float,
  dim: int,
  max_summands: int,
  target: float = 1e-18,
) -> float:
  """A range whose per-round overflow probability is at most `target`."""
  b = batch_quantile(num_examples + 1, sampling_prob, target / 2)  # neighbours with N + 1
  z = float(stats.norm.isf(target / (4 * dim))) if noise_std > 0 else 0.0
  k = max_summands
  raw = l2_norm_clip * b + z * noise_std
  return raw / (1.0 - (k * k / 4 + k / 2 + 1) / HALF) * (1 + 1e-9)
