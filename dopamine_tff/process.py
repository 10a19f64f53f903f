"""TFF iterative processes: Dopamine's DP-SGD round (FSCDP, and CDP with K=1)
and FedAvg with optional local DP-SGD (F, FPDP, and C with K=1).

This is the only module with federated placements and intrinsics. Client and
server work is plain TensorFlow (dopamine_tff/dp_sgd.py) wrapped in
``tff.tensorflow.computation``; every type is derived from TensorSpecs of the
model's weights and the data, never spelled out by hand.

Client inputs per round: the hospital's data set (one or more batches of
(images, labels)) and a stateless seed of shape [2] that belongs to the
hospital (it never reaches the server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import aggregation
from dopamine_tff import dp_sgd

SEED_SPEC = tf.TensorSpec([2], tf.int64)


class ServerState(NamedTuple):
  """Global state held by the server.

  Attributes:
    weights: the global model's trainable weights.
    velocity: server-side momentum buffer (DP-SGD process only; empty for
      FedAvg, whose momentum lives in each local optimisation).
    round_num: rounds applied so far.
  """

  weights: list
  velocity: list
  round_num: np.int32


class DpSgdParams(NamedTuple):
  """One DP-SGD step per round, as in Algorithm 1.

  Attributes:
    sampling_prob: Poisson sampling probability q.
    l2_norm_clip: per-example clip norm C.
    noise_stddev: std of each hospital's noise share (sigma*C/sqrt(K)).
    learning_rate, momentum: server SGD with heavy-ball momentum.
  """

  sampling_prob: float
  l2_norm_clip: float
  noise_stddev: float
  learning_rate: float
  momentum: float


class LocalParams(NamedTuple):
  """FedAvg local training of E epochs of batch B with momentum SGD.

  With ``dp_noise_multiplier`` set, every local step is DP-SGD with Poisson
  sampling q = B/N_k, clip C and the full noise sigma*C (FPDP).
  """

  local_epochs: int
  batch_size: int
  learning_rate: float
  momentum: float
  dp_noise_multiplier: float | None = None
  l2_norm_clip: float = 1.0


def weight_specs(weights) -> list[tf.TensorSpec]:
  return [tf.TensorSpec(np.shape(w), tf.float32) for w in weights]


def data_spec(image_shape) -> tuple[tf.TensorSpec, tf.TensorSpec]:
  return (
    tf.TensorSpec([None, *image_shape], tf.float32),
    tf.TensorSpec([None], tf.int32),
  )


def _all_examples(dataset):
  """The hospital's whole local set as one (x, y) pair of tensors."""
  return dataset.unbatch().batch(2**30).get_single_element()


def _initialize_fn(initial_weights, with_velocity: bool):
  @tff.tensorflow.computation
  def initialize():
    weights = [tf.constant(w, tf.float32) for w in initial_weights]
    velocity = [tf.zeros_like(w) for w in weights] if with_velocity else []
    return ServerState(weights, velocity, tf.constant(0, tf.int32))

  return initialize


def build_dp_sgd_process(
  model_fn: Callable[[], tf.keras.Model],
  initial_weights: list[np.ndarray],
  image_shape,
  params: DpSgdParams,
  secure_sum: aggregation.SecureSumConfig,
) -> tff.templates.IterativeProcess:
  """Dopamine's round (Algorithm 1): per-hospital DP-SGD share, secure sum.

  Every hospital Poisson-samples its data, clips per-example gradients to C,
  sums them and adds its noise share N(0, noise_stddev^2); the noisy sums (and
  the hospitals' example counts) are added by secure sums; the server divides
  by the expected batch size q * sum_k N_k (never the realised one) and takes
  one momentum-SGD step. With one hospital this is central DP-SGD (CDP).

  Momentum sits at the server. The paper keeps a momentum buffer per hospital;
  when all hospitals take part, the mean of their buffers is exactly this
  server buffer, so the weights are the same.
  """
  state_fn = _initialize_fn(initial_weights, with_velocity=True)
  w_specs = weight_specs(initial_weights)
  ds_type = tff.SequenceType(tff.types.tensorflow_to_type(data_spec(image_shape)))

  @tf.function
  def client_tf(model, weights, dataset, seed):
    dp_sgd.assign_weights(model, weights)
    x, y = _all_examples(dataset)
    result = dp_sgd.noisy_clipped_sum(
      model,
      x,
      y,
      sampling_prob=params.sampling_prob,
      l2_norm_clip=params.l2_norm_clip,
      noise_stddev=params.noise_stddev,
      seed=seed,
    )
    return result.noisy_sum, tf.shape(y)[0]

  @tff.tensorflow.computation(w_specs, ds_type, SEED_SPEC)
  def client_update(weights, dataset, seed):
    return client_tf(model_fn(), weights, dataset, seed)

  state_type = state_fn.type_signature.result

  @tff.tensorflow.computation(state_type, w_specs, np.int32)
  def server_update(state, noisy_sum, num_examples):
    expected_batch = params.sampling_prob * tf.cast(num_examples, tf.float32)
    grad = [g / expected_batch for g in noisy_sum]
    weights, velocity = dp_sgd.momentum_step(
      state.weights,
      state.velocity,
      grad,
      learning_rate=params.learning_rate,
      momentum=params.momentum,
    )
    return ServerState(weights, velocity, state.round_num + 1)

  @tff.tensorflow.computation(state_type)
  def get_weights(state):
    return state.weights

  sum_process = aggregation.float_sum_factory(secure_sum).create(
    tff.types.tensorflow_to_type(w_specs)
  )
  count_process = aggregation.count_sum_factory().create(tff.TensorType(np.int32))

  @tff.federated_computation
  def initialize():
    return tff.federated_eval(state_fn, tff.SERVER)

  @tff.federated_computation(
    tff.FederatedType(state_type, tff.SERVER),
    tff.FederatedType(ds_type, tff.CLIENTS),
    tff.FederatedType(tff.types.tensorflow_to_type(SEED_SPEC), tff.CLIENTS),
  )
  def next_fn(state, datasets, seeds):
    weights = tff.federated_broadcast(tff.federated_map(get_weights, state))
    noisy_sums, counts = tff.federated_map(client_update, (weights, datasets, seeds))
    # The only ways out of the hospitals: two secure sums. Each noisy sum
    # already carries its hospital's DP noise share.
    summed = sum_process.next(sum_process.initialize(), noisy_sums)
    total = count_process.next(count_process.initialize(), counts)
    new_state = tff.federated_map(server_update, (state, summed.result, total.result))
    return new_state, summed.measurements

  return tff.templates.IterativeProcess(initialize, next_fn)


def _local_sgd_tf(model, weights, x, y, seed, params: LocalParams):
  """E local epochs of minibatch SGD (or DP-SGD) from `weights`; returns delta."""
  dp_sgd.assign_weights(model, weights)
  n = tf.shape(y)[0]
  batch = params.batch_size
  batches_per_epoch = tf.cast(tf.math.ceil(n / batch), tf.int32)
  steps = params.local_epochs * batches_per_epoch
  velocity = [tf.zeros_like(w) for w in weights]
  q = tf.minimum(1.0, batch / tf.cast(n, tf.float32))
  for step in tf.range(steps):
    step_seed = tf.random.experimental.stateless_fold_in(seed, step)
    if params.dp_noise_multiplier is None:
      epoch = step // batches_per_epoch
      order = tf.argsort(
        tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, -1 - epoch))
      )
      idx = order[(step % batches_per_epoch) * batch :][:batch]
      xb, yb = tf.gather(x, idx), tf.gather(y, idx)
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(dp_sgd.loss_per_example(model(xb, training=True), yb))
      grad = tape.gradient(loss, model.trainable_variables)
    else:
      result = dp_sgd.noisy_clipped_sum(
        model,
        x,
        y,
        sampling_prob=q,
        l2_norm_clip=params.l2_norm_clip,
        noise_stddev=params.dp_noise_multiplier * params.l2_norm_clip,
        seed=step_seed,
      )
      expected = q * tf.cast(n, tf.float32)
      grad = [g / expected for g in result.noisy_sum]
    current = [tf.identity(v) for v in model.trainable_variables]
    new_w, velocity = dp_sgd.momentum_step(
      current, velocity, grad, learning_rate=params.learning_rate, momentum=params.momentum
    )
    dp_sgd.assign_weights(model, new_w)
  return [v - w for v, w in zip(model.trainable_variables, weights)]


def build_fedavg_process(
  model_fn: Callable[[], tf.keras.Model],
  initial_weights: list[np.ndarray],
  image_shape,
  params: LocalParams,
) -> tff.templates.IterativeProcess:
  """FedAvg (McMahan et al. 2017): local epochs, example-weighted mean of deltas.

  With ``params.dp_noise_multiplier`` this is the paper's FPDP: each hospital
  runs DP-SGD on its own with the full noise; there is no secure sum (each
  hospital's update is DP by itself).
  """
  state_fn = _initialize_fn(initial_weights, with_velocity=False)
  w_specs = weight_specs(initial_weights)
  ds_type = tff.SequenceType(tff.types.tensorflow_to_type(data_spec(image_shape)))

  @tf.function
  def client_tf(model, weights, dataset, seed):
    x, y = _all_examples(dataset)
    delta = _local_sgd_tf(model, weights, x, y, seed, params)
    return delta, tf.cast(tf.shape(y)[0], tf.float32)

  @tff.tensorflow.computation(w_specs, ds_type, SEED_SPEC)
  def client_update(weights, dataset, seed):
    return client_tf(model_fn(), weights, dataset, seed)

  state_type = state_fn.type_signature.result

  @tff.tensorflow.computation(state_type, w_specs)
  def server_update(state, mean_delta):
    weights = [w + d for w, d in zip(state.weights, mean_delta)]
    return ServerState(weights, state.velocity, state.round_num + 1)

  @tff.tensorflow.computation(state_type)
  def get_weights(state):
    return state.weights

  @tff.federated_computation
  def initialize():
    return tff.federated_eval(state_fn, tff.SERVER)

  @tff.federated_computation(
    tff.FederatedType(state_type, tff.SERVER),
    tff.FederatedType(ds_type, tff.CLIENTS),
    tff.FederatedType(tff.types.tensorflow_to_type(SEED_SPEC), tff.CLIENTS),
  )
  def next_fn(state, datasets, seeds):
    weights = tff.federated_broadcast(tff.federated_map(get_weights, state))
    deltas, sizes = tff.federated_map(client_update, (weights, datasets, seeds))
    mean_delta = tff.federated_mean(deltas, weight=sizes)
    return tff.federated_map(server_update, (state, mean_delta)), tff.federated_value(
      (), tff.SERVER
    )

  return tff.templates.IterativeProcess(initialize, next_fn)
