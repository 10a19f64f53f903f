"""Secure-sum aggregation factory over our explicit fixed-point encoding.

The hospitals' noisy updates reach the server only through
``QuantizedSecureSumFactory``: each hospital encodes its update with
dopamine_tff/quantization.py (clip to [-bound, bound], b-bit codes, clipped
coordinates counted), the codes are added with
``tff.federated_secure_sum_bitwidth`` (b bits plus room for K summands, so the
sum cannot wrap around), and the server decodes the sum. The original
(PySEAL BFV with a x1000 fixed point and plaintext modulus 40961) accounted for
neither rounding nor wrap-around.

Simulation note: TFF's C++ runtime has no secure-aggregation protocol; the
runtime compiles the secure intrinsic into a plain integer sum
(dopamine_tff/runtime.py), so clipping and rounding are real and the
cryptography is not.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import quantization


def default_bound(*, l2_norm_clip: float, expected_batch: float, noise_stddev: float) -> float:
  """A range no honest coordinate exceeds in practice.

  A coordinate of a sum of b clipped gradients is at most b*C; we allow for a
  batch six standard deviations above its Poisson mean, plus eight standard
  deviations of the noise share.
  """
  batch = expected_batch + 6.0 * math.sqrt(max(expected_batch, 1.0)) + 1.0
  return l2_norm_clip * batch + 8.0 * noise_stddev


class QuantizedSecureSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Secure sum of float32 structures with a stated fixed-point encoding.

  Measurements per round: ``secure_clipped_count`` (coordinates clipped to the
  range, summed securely), ``secure_summands`` (hospitals in the sum),
  ``secure_bound`` and ``secure_bits``.
  """

  def __init__(self, config: quantization.QuantizationConfig):
    self.config = config

  def create(self, value_type) -> tff.templates.AggregationProcess:
    cfg = self.config
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in tff.structure.flatten(value_type)]
    if any(s.dtype != np.float32 for s in specs):
      raise TypeError(f"QuantizedSecureSumFactory sums float32 values, got {value_type}")

    @tff.tensorflow.computation(value_type)
    def encode(value):
      codes, clipped = quantization.encode(tf.nest.flatten(value), cfg)
      return codes, clipped

    code_type = encode.type_signature.result[0]

    @tff.tensorflow.computation(code_type, np.int32)
    def decode(code_sum, summands):
      flat = quantization.decode(tf.nest.flatten(code_sum), summands, cfg)
      return flat[0] if isinstance(value_type, tff.TensorType) else flat

    @tff.tensorflow.computation
    def one():
      return tf.constant(1, tf.int32)

    @tff.federated_computation
    def init():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
      init.type_signature.result, tff.FederatedType(value_type, tff.CLIENTS)
    )
    def next_fn(state, value):
      codes, clipped = tff.federated_map(encode, value)
      code_sum = tff.federated_secure_sum_bitwidth(codes, cfg.bits + _extra_bits(cfg))
      summands = tff.federated_secure_sum_bitwidth(
        tff.federated_eval(one, tff.CLIENTS), quantization.SUM_BITS
      )
      clipped_sum = tff.federated_secure_sum_bitwidth(clipped, quantization.SUM_BITS)
      result = tff.federated_map(decode, (code_sum, summands))
      measurements = tff.federated_zip(
        {
          "secure_clipped_count": clipped_sum,
          "secure_summands": summands,
          "secure_bound": tff.federated_value(np.float32(cfg.bound), tff.SERVER),
          "secure_bits": tff.federated_value(np.int32(cfg.bits), tff.SERVER),
        }
      )
      return tff.templates.MeasuredProcessOutput(state, result, measurements)

    return tff.templates.AggregationProcess(init, next_fn)


def _extra_bits(cfg: quantization.QuantizationConfig) -> int:
  """Bits for the sum of `max_summands` codes (code bits + these <= 31)."""
  return quantization.SUM_BITS - cfg.bits


def sum_in_process(encoded: list, config: quantization.QuantizationConfig):
  """What the factory computes, for the in-process runtime.

  Args:
    encoded: one (codes, clipped) pair per hospital, from quantization.encode.

  Returns:
    (decoded float sum, clipped-coordinate count, number of summands).
  """
  codes = [c for c, _ in encoded]
  code_sum = [tf.add_n(list(parts)) for parts in zip(*codes)]
  clipped = int(sum(int(c) for _, c in encoded))
  return quantization.decode(code_sum, len(encoded), config), clipped, len(encoded)
