"""Plain-TensorFlow client and server work of one round, shared by runtimes.

The TFF processes (dopamine_tff/process.py) wrap these functions in
``tff.tensorflow.computation``s; the in-process runtime
(dopamine_tff/inprocess.py) calls the very same functions in a Python loop.
Keeping one implementation is what makes the two runtimes agree.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dopamine_tff import dp_sgd
from dopamine_tff import handoff
from dopamine_tff import models
from dopamine_tff import quantization
from dopamine_tff import seeds
from dopamine_tff.data import shards
from dopamine_tff.secagg import masking


class ServerState(NamedTuple):
  """Global state held by the server.

  Attributes:
    weights: the global model's trainable weights.
    velocity: server-side momentum buffer (DP-SGD rounds only; empty for
      FedAvg, whose momentum lives in each local optimisation).
    round_num: rounds applied so far.
  """

  weights: list
  velocity: list
  round_num: np.int32


class RoundInputs(NamedTuple):
  """Everything one round of any runtime consumes, beside the server state.

  Every round object (TFF process wrappers in dopamine_tff/process.py, the
  in-process twins in dopamine_tff/inprocess.py and the secure-aggregation
  round in dopamine_tff/secagg/rounds.py) takes ``run(state, RoundInputs)``.

  Attributes:
    datasets: one tf.data.Dataset per taking-part hospital, in `senders` order.
    keys: each hospital's secret 128-bit round key, int64 [2] (seeds.py).
    senders: the taking-part hospitals' indices.
    round_num: the 0-based round.
    dither_keys, dither_signs: plain secure sum only: each sender's pair-dither
      ChaCha20 keys uint32 [d, 8] and signs int32 [d] (dopamine_tff/dither.py);
      the round object makes each sender's dither from them on the host
      (``dithers``).
    correction: plain secure sum only: float64 [n], the dithers of
      non-delivering partners that no longer cancel.
    responders: secure aggregation only: senders still there to unmask.
  """

  datasets: list
  keys: list
  senders: tuple = ()
  round_num: int = 0
  dither_keys: list = ()
  dither_signs: list = ()
  correction: np.ndarray | None = None
  responders: tuple = ()

  def dithers(self, num_words: int) -> list[np.ndarray]:
    """Each sender's fixed-point dither (int64 [n], quantization.host_dither),
    made on its host before its computation runs (data-independent)."""
    return [
      quantization.host_dither(k, s, num_words) for k, s in zip(self.dither_keys, self.dither_signs)
    ]


def as_server_state(state) -> ServerState:
  """`state` as a ServerState (TFF's mergeable multi-worker context returns dicts)."""
  return ServerState(**state) if isinstance(state, dict) else state


class DpSgdParams(NamedTuple):
  """One DP-SGD step per round, as in Algorithm 1.

  Attributes:
    sampling_prob: Poisson sampling probability q.
    l2_norm_clip: per-example clip norm C.
    noise_stddev: std of each hospital's noise share (sigma*C/sqrt(K)).
    learning_rate, momentum: server SGD with heavy-ball momentum.
    patient_unit: the privacy unit is the patient: the data carries a patient
      id per example; patients are sampled with probability q and each
      patient's summed gradient is clipped to C.
    lr_schedule, total_rounds: 'constant', or 'cosine' (the learning rate
      decays as 0.5 (1 + cos(pi t / T)) over T = total_rounds server steps).
  """

  sampling_prob: float
  l2_norm_clip: float
  noise_stddev: float
  learning_rate: float
  momentum: float
  patient_unit: bool = False
  lr_schedule: str = "constant"
  total_rounds: int = 0
  augmentations: int = 0  # augmentation multiplicity m (0: off)
  noise_draws: int = 1  # > 1: floating-point-hardened noise (dp_sgd.SeededGaussianSumQuery)
  frozen: tuple = ()  # per variable, True where --trainable froze it (models.frozen_mask)
  example_files: bool = False  # the data's images are files read after sampling (shards.py)


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
  patient_unit: bool = False  # FPDP: sample batches of patients, clip each patient's sum
  lr_schedule: str = "constant"  # the server's step on the mean delta follows it
  total_rounds: int = 0
  augmentations: int = 0  # m augmented copies per example (DP: averaged before clipping)
  noise_draws: int = 1  # > 1: floating-point-hardened noise (dp_sgd.SeededGaussianSumQuery)
  frozen: tuple = ()  # per variable, True where --trainable froze it (models.frozen_mask)


def weight_specs(weights) -> list[tf.TensorSpec]:
  return [tf.TensorSpec(np.shape(w), tf.float32) for w in weights]


def data_spec(image_shape, with_groups: bool = False, example_files: bool = False) -> tuple:
  """(images, labels) or, for the patient privacy unit, (images, labels, patient ids).

  With ``example_files`` the images are their files' paths (string [N]:
  dopamine_tff/data/shards.py), read after the Poisson sample is drawn.
  """
  images = (
    tf.TensorSpec([None], tf.string)
    if example_files
    else tf.TensorSpec([None, *image_shape], tf.float32)
  )
  spec = (images, tf.TensorSpec([None], tf.int32))
  return (*spec, tf.TensorSpec([None], tf.int32)) if with_groups else spec


def initial_state(initial_weights, with_velocity: bool) -> ServerState:
  weights = [tf.constant(w, tf.float32) for w in initial_weights]
  velocity = [tf.zeros_like(w) for w in weights] if with_velocity else []
  return ServerState(weights, velocity, tf.constant(0, tf.int32))


def all_examples(data, with_groups: bool = False):
  """The hospital's whole local set as (x, y, groups); groups is None per example.

  `data` is the hospital's arrays held in memory (a tuple of tensors: the
  in-process runtime) or a one-element tf.data.Dataset of them (the shard the
  TFF worker reads, dopamine_tff/data/shards.py). Either way the examples
  are taken as they are, not copied element by element: the Poisson sample
  then gathers the ~q N examples it needs (dp_sgd.noisy_clipped_sum).
  """
  parts = tuple(data) if isinstance(data, tuple | list) else data.get_single_element()
  return parts[0], parts[1], (parts[2] if with_groups else None)


def dp_client_update(model, weights, dataset, seed, params: DpSgdParams):
  """A hospital's Dopamine step: (noisy clipped-gradient sum, number of examples)."""
  dp_sgd.assign_weights(model, weights)
  x, y, groups = all_examples(dataset, params.patient_unit)
  read = None
  if params.example_files:  # x: the images' files; read the sampled ones only
    read = functools.partial(shards.read_examples, image_shape=model.input_shape[1:])
  result = dp_sgd.noisy_clipped_sum(
    model,
    x,
    y,
    sampling_prob=params.sampling_prob,
    l2_norm_clip=params.l2_norm_clip,
    noise_stddev=params.noise_stddev,
    seed=seed,
    groups=groups,
    augmentations=params.augmentations,
    noise_draws=params.noise_draws,
    read=read,
  )
  return result.noisy_sum, tf.shape(y)[0]


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(round_num, schedule: str, total_rounds: int):
  """Multiplier of the learning rate at 0-based server step `round_num`."""
  if schedule == "constant" or total_rounds <= 0:
    return tf.constant(1.0)
  if schedule != "cosine":
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
  t = tf.minimum(tf.cast(round_num, tf.float32) / float(total_rounds), 1.0)
  return 0.5 * (1.0 + tf.cos(np.pi * t))


def dp_server_update(state: ServerState, noisy_sum, num_examples, params: DpSgdParams):
  """Divides by the expected batch size q*N and takes a momentum-SGD step.

  Skips the update (returns the weights unchanged, round counted) when no
  hospital delivered, i.e. ``num_examples == 0``.
  """
  expected_batch = params.sampling_prob * tf.cast(num_examples, tf.float32)
  safe = tf.maximum(expected_batch, 1e-30)
  grad = [g / safe for g in noisy_sum]
  lr = params.learning_rate * lr_factor(state.round_num, params.lr_schedule, params.total_rounds)
  weights, velocity = dp_sgd.momentum_step(
    state.weights,
    state.velocity,
    grad,
    learning_rate=lr,
    momentum=params.momentum,
  )
  apply = num_examples > 0
  # A frozen variable keeps its value bit for bit: the secure sum's rounding
  # would otherwise move it by ~1e-7 a round.
  frozen = params.frozen or (False,) * len(weights)
  weights = [o if f else tf.where(apply, n, o) for n, o, f in zip(weights, state.weights, frozen)]
  velocity = [
    o if f else tf.where(apply, n, o) for n, o, f in zip(velocity, state.velocity, frozen)
  ]
  return ServerState(weights, velocity, state.round_num + 1)


def _local_gradient(model, x, y, groups, n, step, seed, batches_per_epoch, params: LocalParams):
  batch = params.batch_size
  if params.dp_noise_multiplier is None:
    epoch = step // batches_per_epoch
    epoch_seed = seeds.stream(seed, seeds.Purpose.SHUFFLE, epoch)
    order = tf.argsort(tf.random.stateless_uniform([n], epoch_seed))
    idx = order[(step % batches_per_epoch) * batch :][:batch]
    xb, yb = tf.gather(x, idx), tf.gather(y, idx)
    if params.augmentations:
      aug_seed = seeds.stream(seed, seeds.Purpose.AUGMENT, step)
      xb, yb, _ = dp_sgd.augmented_copies(xb, yb, params.augmentations, aug_seed)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(dp_sgd.loss_per_example(model(xb, training=True), yb))
    return models.scatter(model, tape.gradient(loss, model.trainable_variables))
  # q = B / (examples, or patients for the patient unit); n is in the same unit.
  q = tf.minimum(1.0, batch / tf.cast(n, tf.float32))
  result = dp_sgd.noisy_clipped_sum(
    model,
    x,
    y,
    sampling_prob=q,
    l2_norm_clip=params.l2_norm_clip,
    noise_stddev=params.dp_noise_multiplier * params.l2_norm_clip,
    seed=seeds.stream(seed, seeds.Purpose.LOCAL_STEP, step),
    groups=groups,
    augmentations=params.augmentations,
    noise_draws=params.noise_draws,
  )
  expected = q * tf.cast(tf.shape(y)[0], tf.float32)  # expected images in the batch
  return [g / expected for g in result.noisy_sum]


def fedavg_client_update(model, weights, dataset, seed, params: LocalParams):
  """E local epochs of minibatch SGD (or DP-SGD for FPDP) from `weights`.

  Returns:
    (weights delta, number of local examples as float32).
  """
  dp_sgd.assign_weights(model, weights)
  x, y, groups = all_examples(dataset, params.patient_unit)
  # Sampling units: examples, or patients for FPDP's patient privacy unit.
  n = tf.shape(y)[0] if groups is None else tf.reduce_max(groups) + 1
  batches_per_epoch = tf.cast(tf.math.ceil(n / params.batch_size), tf.int32)
  velocity = [tf.zeros_like(w) for w in weights]
  for step in tf.range(params.local_epochs * batches_per_epoch):
    grad = _local_gradient(model, x, y, groups, n, step, seed, batches_per_epoch, params)
    current = [tf.identity(v) for v in models.variables(model)]
    new_w, velocity = dp_sgd.momentum_step(
      current, velocity, grad, learning_rate=params.learning_rate, momentum=params.momentum
    )
    dp_sgd.assign_weights(model, new_w)
  delta = [v - w for v, w in zip(models.variables(model), weights)]
  return delta, tf.cast(tf.shape(y)[0], tf.float32)


def fedavg_server_update(
  state: ServerState,
  weighted_delta_sum,
  total_weight,
  lr_schedule="constant",
  total_rounds=0,
  frozen: tuple = (),
):
  """Adds the example-weighted mean of the deltas (skips when nobody delivered).

  With a learning-rate schedule the mean delta is scaled by its factor (a
  server learning rate that decays).
  """
  safe = tf.maximum(total_weight, 1e-30)
  scale = lr_factor(state.round_num, lr_schedule, total_rounds)
  frozen = frozen or (False,) * len(state.weights)
  weights = [
    w if f else w + tf.where(total_weight > 0, scale * d / safe, 0.0)
    for w, d, f in zip(state.weights, weighted_delta_sum, frozen)
  ]
  return ServerState(weights, state.velocity, state.round_num + 1)


def encoded_client_update(model, weights, dataset, seed, dither, params, secure_sum):
  """A Dopamine step, encoded for the integer sum: (codes, N_k, changed flag).

  The noisy sum of dp_client_update is encoded mod 2**32 with the hospital's
  zero-sum pairwise dither (int64 [n], quantization.host_dither: made on its
  host from the round's pair keys; dopamine_tff/quantization.py): the release is then
  a post-processing of the noised total. The flag (int32 0 or 1, through the
  secure sum) says whether any coordinate was not finite or out of float64's
  exact range; the trainer abandons such a round (the count itself, which
  could depend on the data, is never released).
  """
  noisy_sum, n = dp_client_update(model, weights, dataset, seed, params)
  dither = handoff.receive(dither, tf.int64)  # the array, or its file (handoff.py)
  codes, changed = quantization.encode(noisy_sum, dither, secure_sum)
  return codes, n, tf.minimum(changed, 1)


def encoded_server_update(state, code_sum, correction, num_examples, params, secure_sum):
  """Decodes the sum of codes (int64 [n]) and takes the server step."""
  flat = quantization.decode(code_sum, correction, secure_sum)
  total = quantization.unflatten(flat, [w.shape for w in state.weights])
  return dp_server_update(state, total, num_examples, params)


def masked_client_update(model, weights, dataset, seed, dither, mask, params, secure_sum):
  """A Dopamine step under SecAgg: (masked codes mod 2**32 as int64, N_k, changed flag).

  The codes of encoded_client_update get the hospital's mask (uint32 [n], made
  on its host from this round's keys: masking.host_mask) in this computation:
  nothing unmasked leaves it.
  """
  codes, n, changed = encoded_client_update(
    model, weights, dataset, seed, dither, params, secure_sum
  )
  mask = handoff.receive(mask, tf.uint32)
  masked = tf.math.floormod(tf.cast(codes, tf.int64) + tf.cast(mask, tf.int64), masking.MODULUS)
  return masked, n, changed
