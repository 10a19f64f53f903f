"""TFF iterative processes: Dopamine's DP-SGD round (FSCDP, and CDP with K=1)
and FedAvg with optional local DP-SGD (F, FPDP, and C with K=1).

This is the only module with federated placements and intrinsics. Client and
server work is plain TensorFlow (dopamine_tff/tf_rounds.py) wrapped in
``tff.tensorflow.computation``s; every type is derived from TensorSpecs of the
model's weights and the data, never spelled out by hand.

Client inputs per round: the hospital's data set (one or more batches of
(images, labels)) and a stateless seed of shape [2] that belongs to the
hospital (it never reaches the server).

The builders return TFF objects (inspected by tests); ``dp_sgd_round`` and
``fedavg_round`` wrap them behind ``run(state, tf_rounds.RoundInputs)``, the
contract every runtime's round object shares, so the argument order TFF needs
(SERVER-placed arguments first) stays inside this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import aggregation
from dopamine_tff import handoff
from dopamine_tff import quantization
from dopamine_tff import tf_rounds

SEED_SPEC = tf.TensorSpec([2], tf.int64)
# Re-exported for callers that build processes.
ServerState = tf_rounds.ServerState
DpSgdParams = tf_rounds.DpSgdParams
LocalParams = tf_rounds.LocalParams


def _common(initial_weights, image_shape, with_velocity, with_groups=False, example_files=False):
  @tff.tensorflow.computation
  def state_fn():
    return tf_rounds.initial_state(initial_weights, with_velocity)

  w_specs = tf_rounds.weight_specs(initial_weights)
  ds_type = tff.SequenceType(
    tff.types.tensorflow_to_type(tf_rounds.data_spec(image_shape, with_groups, example_files))
  )
  state_type = state_fn.type_signature.result

  @tff.tensorflow.computation(state_type)
  def get_weights(state):
    return state.weights

  @tff.federated_computation
  def initialize():
    return tff.federated_eval(state_fn, tff.SERVER)

  return w_specs, ds_type, state_type, get_weights, initialize


def _client_types(state_type, ds_type):
  return (
    tff.FederatedType(state_type, tff.SERVER),
    tff.FederatedType(ds_type, tff.CLIENTS),
    tff.FederatedType(tff.types.tensorflow_to_type(SEED_SPEC), tff.CLIENTS),
  )


def build_dp_client_computation(model_fn, initial_weights, image_shape, params):
  """A hospital's work as a TF computation: (weights, data, seed) -> (noisy sum, N_k).

  Its first output is what the hospital hands to the secure sum: the sum of
  clipped per-example gradients with the hospital's noise share already added.
  """
  w_specs = tf_rounds.weight_specs(initial_weights)
  ds_type = tff.SequenceType(
    tff.types.tensorflow_to_type(
      tf_rounds.data_spec(image_shape, params.patient_unit, params.example_files)
    )
  )
  client_fn = tf.function(tf_rounds.dp_client_update)

  @tff.tensorflow.computation(w_specs, ds_type, SEED_SPEC)
  def client_update(weights, dataset, seed):
    return client_fn(model_fn(), weights, dataset, seed, params)

  return client_update


@tff.tensorflow.computation
def _one():
  return tf.constant(1, tf.int32)


def _num_words(initial_weights) -> int:
  return int(sum(np.size(w) for w in initial_weights))


def _dither_spec(initial_weights, via_files: bool):
  """A hospital's fixed-point pair dither, int64 [n] (quantization.host_dither), or
  the path of its file (dopamine_tff/handoff.py)."""
  return handoff.spec(_num_words(initial_weights), tf.int64, via_files)


def _clients(spec):
  return tff.FederatedType(tff.types.tensorflow_to_type(spec), tff.CLIENTS)


def _server(spec):
  return tff.FederatedType(tff.types.tensorflow_to_type(spec), tff.SERVER)


def build_dp_sgd_process(
  model_fn: Callable[[], tf.keras.Model],
  initial_weights: list[np.ndarray],
  image_shape,
  params: tf_rounds.DpSgdParams,
  secure_sum: quantization.QuantizationConfig,
  *,
  dither_degree: int,
  handoff_files: bool = False,
) -> tff.templates.IterativeProcess:
  """Dopamine's round (Algorithm 1): per-hospital DP-SGD share, secure sum.

  Every hospital Poisson-samples its data, clips per-example gradients to C,
  sums them, adds its noise share N(0, noise_stddev^2) and encodes the result
  mod 2**32 with its zero-sum pairwise dither (made on its host from
  ``dither_degree`` pair keys);
  the codes (and the hospitals' example counts) are added by secure sums; the
  server decodes (removing dropped hospitals' dithers: the SERVER-placed
  ``correction``), divides by the expected batch size q * sum_k N_k (never the
  realised one) and takes one momentum-SGD step. With one hospital this is
  central DP-SGD (CDP).

  Momentum sits at the server. The paper keeps a momentum buffer per hospital;
  when all hospitals take part, the mean of their buffers is exactly this
  server buffer, so the weights are the same.

  ``next(state, correction, datasets, seeds, dithers)``; with ``handoff_files``
  each dither is the path of its file (dopamine_tff/handoff.py).
  """
  w_specs, ds_type, state_type, get_weights, initialize = _common(
    initial_weights,
    image_shape,
    with_velocity=True,
    with_groups=params.patient_unit,
    example_files=params.example_files,
  )
  del dither_degree  # the dithers come made (RoundInputs.dithers)
  client_fn = tf.function(tf_rounds.encoded_client_update)
  flat_spec = tf.TensorSpec([_num_words(initial_weights)], tf.int64)
  dither_spec = _dither_spec(initial_weights, handoff_files)
  correction_spec = tf.TensorSpec(flat_spec.shape, tf.float64)

  @tff.tensorflow.computation(w_specs, ds_type, SEED_SPEC, dither_spec)
  def client_update(weights, dataset, seed, dither):
    return client_fn(model_fn(), weights, dataset, seed, dither, params, secure_sum)

  @tff.tensorflow.computation(state_type, flat_spec, correction_spec, np.int32)
  def server_update(state, code_sum, correction, num_examples):
    return tf_rounds.encoded_server_update(
      state, code_sum, correction, num_examples, params, secure_sum
    )

  sum_process = aggregation.ModularSecureSumFactory().create(
    tff.types.tensorflow_to_type(flat_spec)
  )
  bits = quantization.SUM_BITS  # exact integer counts, sums below 2**31

  state_t, data_t, seed_t = _client_types(state_type, ds_type)

  # SERVER-placed arguments come first: TFF 0.87's mergeable (multi-worker)
  # context gives every worker the same clients when a SERVER argument
  # follows CLIENTS ones (seen: two workers both ran clients 0 and 1).
  @tff.federated_computation(
    state_t, _server(correction_spec), data_t, seed_t, _clients(dither_spec)
  )
  def next_fn(state, correction, datasets, seeds, dithers):
    weights = tff.federated_broadcast(tff.federated_map(get_weights, state))
    codes, counts, changed = tff.federated_map(client_update, (weights, datasets, seeds, dithers))
    # The only ways out of the hospitals are secure sums. Each code vector
    # already carries its hospital's DP noise share.
    summed = sum_process.next(sum_process.initialize(), codes)
    total = tff.federated_secure_sum_bitwidth(counts, bits)
    new_state = tff.federated_map(server_update, (state, summed.result, correction, total))
    measurements = tff.federated_zip(
      {
        "secure_clipped_count": tff.federated_secure_sum_bitwidth(changed, bits),
        "secure_summands": tff.federated_secure_sum_bitwidth(
          tff.federated_eval(_one, tff.CLIENTS), bits
        ),
      }
    )
    return new_state, measurements

  return tff.templates.IterativeProcess(initialize, next_fn)


def build_fedavg_process(
  model_fn: Callable[[], tf.keras.Model],
  initial_weights: list[np.ndarray],
  image_shape,
  params: tf_rounds.LocalParams,
) -> tff.templates.IterativeProcess:
  """FedAvg (McMahan et al. 2017): local epochs, example-weighted mean of deltas.

  With ``params.dp_noise_multiplier`` this is the paper's FPDP: each hospital
  runs DP-SGD on its own with the full noise; there is no secure sum (each
  hospital's update is DP by itself).
  """
  w_specs, ds_type, state_type, get_weights, initialize = _common(
    initial_weights, image_shape, with_velocity=False, with_groups=params.patient_unit
  )
  client_fn = tf.function(tf_rounds.fedavg_client_update)

  @tff.tensorflow.computation(w_specs, ds_type, SEED_SPEC)
  def client_update(weights, dataset, seed):
    delta, size = client_fn(model_fn(), weights, dataset, seed, params)
    return [d * size for d in delta], size

  @tff.tensorflow.computation(state_type, w_specs, np.float32)
  def server_update(state, weighted_sum, total):
    return tf_rounds.fedavg_server_update(
      state, weighted_sum, total, params.lr_schedule, params.total_rounds, params.frozen
    )

  @tff.federated_computation(*_client_types(state_type, ds_type))
  def next_fn(state, datasets, seeds):
    weights = tff.federated_broadcast(tff.federated_map(get_weights, state))
    weighted, sizes = tff.federated_map(client_update, (weights, datasets, seeds))
    new_state = tff.federated_map(
      server_update, (state, tff.federated_sum(weighted), tff.federated_sum(sizes))
    )
    return new_state, tff.federated_value((), tff.SERVER)

  return tff.templates.IterativeProcess(initialize, next_fn)


class MaskedDpSgd(NamedTuple):
  """Dopamine's round with a real secure-aggregation protocol, in three parts.

  The protocol's unmasking happens between ``masked_round`` and
  ``server_update``, at the server, with the secrets the protocol reveals
  (dopamine_tff/secagg/protocol.py).
  """

  initialize: object  # () -> state@SERVER
  masked_round: object  # (state, data, keys, dithers, masks) -> sums@SERVER
  server_update: object  # (state, code sum, summands, examples) -> state


def build_masked_dp_sgd_process(
  model_fn: Callable[[], tf.keras.Model],
  initial_weights: list[np.ndarray],
  image_shape,
  params: tf_rounds.DpSgdParams,
  secure_sum: quantization.QuantizationConfig,
  *,
  dither_degree: int,
  degree: int,
  prg: str,
  handoff_files: bool = False,
) -> MaskedDpSgd:
  """FSCDP whose hospitals mask their codes mod 2**32 inside their computation.

  Each hospital's noisy sum is encoded as for ``build_dp_sgd_process`` and
  masked with ChaCha20 streams (``degree`` pairwise masks and a self mask) in
  the same TF computation; the server adds the masked vectors with a plain
  int64 ``federated_sum`` (masking is the protection, so no secure intrinsic
  is needed for them) and gets nothing it can read until the protocol's
  unmasking. Example and changed-coordinate counts go through secure sums.
  """
  w_specs, ds_type, state_type, _, initialize = _common(
    initial_weights,
    image_shape,
    with_velocity=True,
    with_groups=params.patient_unit,
    example_files=params.example_files,
  )
  # The masks and dithers are made on the hospital's host (masking.host_mask,
  # quantization.host_dither) and come in made.
  del degree, prg, dither_degree
  client_fn = tf.function(tf_rounds.masked_client_update)
  dither_spec = _dither_spec(initial_weights, handoff_files)
  mask_spec = handoff.spec(_num_words(initial_weights), tf.uint32, handoff_files)
  num_words = _num_words(initial_weights)

  @tff.tensorflow.computation(w_specs, ds_type, SEED_SPEC, dither_spec, mask_spec)
  def client_update(weights, dataset, seed, dither, mask):
    return client_fn(model_fn(), weights, dataset, seed, dither, mask, params, secure_sum)

  @tff.tensorflow.computation(state_type)
  def get_weights(state):
    return state.weights

  @tff.federated_computation(
    *_client_types(state_type, ds_type),
    _clients(dither_spec),
    _clients(mask_spec),
  )
  def masked_round(state, datasets, seeds, dithers, masks):
    weights = tff.federated_broadcast(tff.federated_map(get_weights, state))
    masked, counts, changed = tff.federated_map(
      client_update, (weights, datasets, seeds, dithers, masks)
    )
    bits = quantization.SUM_BITS
    return (
      tff.federated_sum(masked),
      tff.federated_secure_sum_bitwidth(counts, bits),
      tff.federated_secure_sum_bitwidth(changed, bits),
    )

  @tff.tensorflow.computation(
    state_type,
    tf.TensorSpec([num_words], tf.int64),
    tf.TensorSpec([num_words], tf.float64),
    np.int32,
  )
  def server_update(state, code_sum, correction, num_examples):
    return tf_rounds.encoded_server_update(
      state, code_sum, correction, num_examples, params, secure_sum
    )

  return MaskedDpSgd(initialize, masked_round, server_update)


class DpSgdRound:
  """``build_dp_sgd_process``'s process behind ``run(state, RoundInputs)``.

  With a ``handoff`` the hospitals' dithers reach the worker as files.
  """

  def __init__(self, iterative_process: tff.templates.IterativeProcess, handoff=None):
    self.process = iterative_process
    self.handoff = handoff

  def initialize(self):
    return self.process.initialize()

  def run(self, state, inputs: tf_rounds.RoundInputs):
    num_words = int(sum(np.size(w) for w in tf_rounds.as_server_state(state).weights))
    dithers = inputs.dithers(num_words)
    try:
      if self.handoff is not None:
        dithers = [self.handoff.put(d) for d in dithers]
      state, measurements = self.process.next(
        state, inputs.correction, inputs.datasets, inputs.keys, dithers
      )
    finally:
      if self.handoff is not None:
        self.handoff.clear()
    return tf_rounds.as_server_state(state), dict(measurements)


class FedAvgRound:
  """``build_fedavg_process``'s process behind ``run(state, RoundInputs)``."""

  def __init__(self, iterative_process: tff.templates.IterativeProcess):
    self.process = iterative_process

  def initialize(self):
    return self.process.initialize()

  def run(self, state, inputs: tf_rounds.RoundInputs):
    state, _ = self.process.next(state, inputs.datasets, inputs.keys)
    return tf_rounds.as_server_state(state), {}


def dp_sgd_round(*args, handoff=None, **kwargs) -> DpSgdRound:
  """``build_dp_sgd_process(*args, **kwargs)`` as a round object (dithers as files
  through `handoff`, a handoff.Handoff, when given)."""
  built = build_dp_sgd_process(*args, handoff_files=handoff is not None, **kwargs)
  return DpSgdRound(built, handoff)


def fedavg_round(*args, **kwargs) -> FedAvgRound:
  """``build_fedavg_process(*args, **kwargs)`` as a round object."""
  return FedAvgRound(build_fedavg_process(*args, **kwargs))
