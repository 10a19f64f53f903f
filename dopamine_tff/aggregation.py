"""Secure-sum aggregation factories with explicit quantisation.

The hospitals' noisy updates reach the server only through
``tff.aggregators.SecureSumFactory``: each float is clipped to
``[-bound, bound]``, quantised to a 32-bit unsigned integer (step
``2*bound/(2**32-1)``), summed with ``federated_secure_sum_bitwidth`` and mapped
back at the server. Values outside the range are clipped, never wrapped, and
counted (``secure_upper_clipped_count`` / ``secure_lower_clipped_count`` in the
round's metrics). The original (PySEAL BFV with a x1000 fixed point and
plaintext modulus 40961) did not account for rounding or wrap-around.

Simulation note: TFF's C++ runtime has no secure-aggregation protocol; the
runtime compiles the secure intrinsic into a plain sum with the same
quantisation (dopamine_tff/runtime.py), so clipping and rounding are real and
the cryptography is not.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow_federated as tff

QUANTISATION_BITS = 32  # fixed by tff.aggregators.SecureSumFactory for floats


@dataclasses.dataclass(frozen=True)
class SecureSumConfig:
  """Range of the secure sum of float updates.

  Attributes:
    bound: every coordinate a hospital sends is clipped to [-bound, bound].
  """

  bound: float

  def __post_init__(self):
    if not (self.bound > 0 and math.isfinite(self.bound)):
      raise ValueError(f"secure-sum bound must be finite and > 0, got {self.bound}")

  @property
  def step(self) -> float:
    """Quantisation step of one hospital's value."""
    return 2.0 * self.bound / (2**QUANTISATION_BITS - 1)

  @property
  def error_std(self) -> float:
    """Std of one hospital's rounding error (uniform on one step)."""
    return self.step / math.sqrt(12.0)

  def describe(self) -> str:
    return (
      f"secure sum: range [-{self.bound:.6g}, {self.bound:.6g}], "
      f"{QUANTISATION_BITS}-bit quantisation per hospital, step {self.step:.3g}, "
      f"rounding error std {self.error_std:.3g} per hospital and coordinate"
    )


def default_bound(*, l2_norm_clip: float, expected_batch: float, noise_stddev: float) -> float:
  """A range no honest coordinate exceeds in practice.

  A coordinate of a sum of b clipped gradients is at most b*C; we allow for a
  batch six standard deviations above its Poisson mean, plus eight standard
  deviations of the noise share.
  """
  batch = expected_batch + 6.0 * math.sqrt(max(expected_batch, 1.0)) + 1.0
  return l2_norm_clip * batch + 8.0 * noise_stddev


def float_sum_factory(config: SecureSumConfig) -> tff.aggregators.SecureSumFactory:
  """Secure sum of float32 structures over [-bound, bound]."""
  return tff.aggregators.SecureSumFactory(
    upper_bound_threshold=float(config.bound),
    lower_bound_threshold=-float(config.bound),
  )


def count_sum_factory(max_count: int = 2**24) -> tff.aggregators.SecureSumFactory:
  """Secure sum of int32 counts in [0, max_count] (exact, no quantisation)."""
  return tff.aggregators.SecureSumFactory(upper_bound_threshold=max_count, lower_bound_threshold=0)
