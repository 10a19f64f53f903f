"""Fixed-point encoding of float updates for a secure integer sum (plain TF).

A hospital clips every coordinate to [-bound, bound] and maps it to an
unsigned integer with ``bits`` bits (deterministic rounding to nearest):

    q = round((clip(v, -bound, bound) + bound) / step),  step = 2*bound/(2**bits - 1)

The server receives only the integer sum of K hospitals' codes and decodes
``sum * step - K * bound``. ``bits`` is chosen so that the sum of up to
``max_summands`` codes fits in a signed 32-bit integer: the sum can never wrap
around, by construction. Coordinates outside the range are clipped (not
wrapped) and counted; the count is reported with the round's metrics.

Why the sum cannot wrap: every code is clamped in integer arithmetic to
[0, 2**bits - 1], and max_summands * (2**bits - 1) <= 2**31 - max_summands
< 2**31 (bits = 31 - ceil(log2 max_summands)). tests/aggregation_test.py sums
K codes at both ends of the range for every K from 1 to 1024.

Encoding is done in float64, so the rounding error of one hospital is at most
step/2 per coordinate (std step/sqrt(12), measured in a test); it is far below
the DP noise. Strictly, rounding and clipping each share before the sum make
the released sum a function of the shares, not only of their noisy total
(README, privacy section).
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

SUM_BITS = 31  # the integer sum lives in a signed 32-bit integer


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
  """Range and bit width of the secure sum.

  Attributes:
    bound: coordinates are clipped to [-bound, bound].
    max_summands: the most hospitals whose codes are ever summed.
  """

  bound: float
  max_summands: int = 1024

  def __post_init__(self):
    if not (self.bound > 0 and math.isfinite(self.bound)):
      raise ValueError(f"secure-sum bound must be finite and > 0, got {self.bound}")
    if not 1 <= self.max_summands <= 2**20:
      raise ValueError(f"max_summands must be in [1, 2**20], got {self.max_summands}")

  @property
  def bits(self) -> int:
    """Bits of one hospital's code, leaving room for the sum of all of them."""
    return SUM_BITS - math.ceil(math.log2(self.max_summands)) if self.max_summands > 1 else SUM_BITS

  @property
  def step(self) -> float:
    return 2.0 * self.bound / (2**self.bits - 1)

  @property
  def error_std(self) -> float:
    """Std of one hospital's rounding error per coordinate (uniform on a step)."""
    return self.step / math.sqrt(12.0)

  def describe(self) -> str:
    return (
      f"secure sum: range [-{self.bound:.6g}, {self.bound:.6g}], {self.bits}-bit codes "
      f"per hospital (sums of up to {self.max_summands} fit in {SUM_BITS} bits, no "
      f"wrap-around), step {self.step:.3g}, rounding error std {self.error_std:.3g}"
    )


def encode(values, config: QuantizationConfig):
  """Clips and quantises a list of float tensors.

  The arithmetic is float64 (exact to far below one step for codes of up to 31
  bits) and the final clamp to [0, 2**bits - 1] is in integers: in float32,
  ``2.0**bits - 1`` rounds up to ``2**bits`` for bits > 24, and K such codes
  reached 2**31 and wrapped. NaN coordinates are encoded as 0.0.

  Returns:
    (list of int32 codes, int32 number of coordinates that were changed by
    more than rounding: outside [-bound, bound], NaN, or clamped).
  """
  bound = tf.constant(config.bound, tf.float64)
  scale = tf.constant((2**config.bits - 1) / (2.0 * config.bound), tf.float64)
  top = tf.constant(2**config.bits - 1, tf.int64)
  codes, changed = [], []
  for v in values:
    v = tf.cast(v, tf.float64)
    nan = tf.math.is_nan(v)
    v = tf.where(nan, tf.zeros_like(v), v)
    c = tf.clip_by_value(v, -bound, bound)
    q = tf.cast(tf.round((c + bound) * scale), tf.int64)
    code = tf.clip_by_value(q, tf.constant(0, tf.int64), top)
    hit = nan | (tf.abs(v) > bound) | tf.not_equal(code, q)
    changed.append(tf.reduce_sum(tf.cast(hit, tf.int32)))
    codes.append(tf.cast(code, tf.int32))
  return codes, tf.add_n(changed) if changed else tf.constant(0, tf.int32)


def decode(code_sums, num_summands, config: QuantizationConfig, dtype=tf.float32):
  """Maps the integer sum of `num_summands` hospitals' codes back to floats.

  The arithmetic is float64 (a sum of codes can exceed float32's 24-bit
  mantissa); the result is cast to `dtype` (float32 for the model, which adds
  the usual float32 rounding of the result, relative 2**-24).
  """
  step = tf.constant(config.step, tf.float64)
  offset = tf.cast(num_summands, tf.float64) * config.bound
  return [tf.cast(tf.cast(s, tf.float64) * step - offset, dtype) for s in code_sums]
