"""Fixed-point encoding of float updates for a secure integer sum (plain TF).

A hospital clips every coordinate to [-bound, bound] and maps it to an
unsigned integer with ``bits`` bits (deterministic rounding to nearest):

    q = round((clip(v, -bound, bound) + bound) / step),  step = 2*bound/(2**bits - 1)

The server receives only the integer sum of K hospitals' codes and decodes
``sum * step - K * bound``. ``bits`` is chosen so that the sum of up to
``max_summands`` codes fits in a signed 32-bit integer: the sum can never wrap
around, by construction. Coordinates outside the range are clipped (not
wrapped) and counted; the count is reported with the round's metrics.

The rounding error of one hospital is at most step/2 per coordinate (std
step/sqrt(12)); tests check it is far below the DP noise.
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

  Returns:
    (list of int32 codes, int32 number of clipped coordinates).
  """
  bound = tf.constant(config.bound, tf.float32)
  scale = tf.constant((2**config.bits - 1) / (2.0 * config.bound), tf.float32)
  codes, clipped = [], []
  for v in values:
    v = tf.cast(v, tf.float32)
    clipped.append(tf.reduce_sum(tf.cast(tf.abs(v) > bound, tf.int32)))
    c = tf.clip_by_value(v, -bound, bound)
    q = tf.round((c + bound) * scale)
    codes.append(tf.cast(tf.clip_by_value(q, 0.0, 2.0**config.bits - 1), tf.int32))
  return codes, tf.add_n(clipped) if clipped else tf.constant(0, tf.int32)


def decode(code_sums, num_summands, config: QuantizationConfig):
  """Maps the integer sum of `num_summands` hospitals' codes back to floats."""
  step = tf.constant(config.step, tf.float64)
  offset = tf.cast(num_summands, tf.float64) * config.bound
  # float64: the sum of codes can exceed float32's 24-bit mantissa.
  return [tf.cast(tf.cast(s, tf.float64) * step - offset, tf.float32) for s in code_sums]
