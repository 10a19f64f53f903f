"""Secure sum of the hospitals' integer codes modulo 2**32 (a TFF aggregation factory).

Each hospital encodes its noisy update into codes in [0, 2**32) in its own TF
computation (dopamine_tff/quantization.py: zero-sum pairwise dither, no
per-share clipping). ``ModularSecureSumFactory`` adds the codes with
``tff.federated_secure_sum_bitwidth`` (32-bit inputs summed in int64, so K <
2**31 summands cannot overflow) and reduces the sum modulo 2**32 at the
server; decoding (with the correction for dropped hospitals' dithers) is the
server's step. The original (PySEAL BFV with a x1000 fixed point and plaintext
modulus 40961) accounted for neither rounding nor wrap-around.

Simulation note: TFF's C++ runtime has no secure-aggregation protocol; the
runtime compiles the secure intrinsic into a plain integer sum
(dopamine_tff/runtime/). ``--secure_aggregation=secagg`` runs a real masking
protocol instead (dopamine_tff/secagg/).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import quantization


class ModularSecureSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Secure sum of int64 vectors with entries in [0, 2**32), reduced mod 2**32."""

  def create(self, value_type) -> tff.templates.AggregationProcess:
    if not (isinstance(value_type, tff.TensorType) and value_type.dtype == np.int64):
      raise TypeError(f"ModularSecureSumFactory sums one int64 tensor, got {value_type}")

    @tff.tensorflow.computation(value_type)
    def reduce(total):
      return tf.math.floormod(total, quantization.MODULUS)

    @tff.federated_computation
    def init():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
      init.type_signature.result, tff.FederatedType(value_type, tff.CLIENTS)
    )
    def next_fn(state, value):
      total = tff.federated_secure_sum_bitwidth(value, quantization.BITS)
      result = tff.federated_map(reduce, total)
      return tff.templates.MeasuredProcessOutput(state, result, tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init, next_fn)


def sum_in_process(codes: list) -> np.ndarray:
  """What the factory computes, for the in-process runtime."""
  total = np.zeros(np.shape(codes[0]), np.int64)
  for c in codes:
    total += np.asarray(c, np.int64)
  return np.mod(total, quantization.MODULUS)
