"""The in-process runtime: the same rounds as the TFF processes, in a Python loop.

Calls the very same plain-TF client and server functions
(dopamine_tff/tf_rounds.py) and the same fixed-point encoding
(dopamine_tff/quantization.py) as dopamine_tff/process.py, in this Python
process. Where TensorFlow sees a GPU (``tensorflow[and-cuda]``), the client
and server work runs on it; the PyPI TFF worker is built without CUDA.

The objects here have the ``initialize()`` / ``next(state, datasets, seeds)``
interface of the TFF iterative processes, so trainers swap one for the other.
Integer code sums make the DP-SGD round's aggregation exact in any order;
FedAvg sums floats in client order, as TFF's runtime does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dopamine_tff import aggregation
from dopamine_tff import quantization
from dopamine_tff import tf_rounds


def _numpy_state(state) -> tf_rounds.ServerState:
  return tf_rounds.ServerState(
    [w.numpy() for w in state.weights],
    [v.numpy() for v in state.velocity],
    np.int32(state.round_num),
  )


class InProcessDpSgd:
  """In-process twin of process.build_dp_sgd_process."""

  def __init__(self, model_fn, initial_weights, image_shape, params, secure_sum):
    del image_shape
    self._initial = initial_weights
    self._cfg = secure_sum
    model = model_fn()
    self._client = tf.function(lambda w, ds, s: tf_rounds.dp_client_update(model, w, ds, s, params))
    self._encode = tf.function(lambda v: quantization.encode(v, secure_sum))
    self._server = tf.function(
      lambda state, total, n: tf_rounds.dp_server_update(state, total, n, params)
    )

  def initialize(self) -> tf_rounds.ServerState:
    return _numpy_state(tf_rounds.initial_state(self._initial, with_velocity=True))

  def next(self, state, datasets, seeds):
    encoded, examples = [], 0
    for dataset, seed in zip(datasets, seeds):
      noisy_sum, n = self._client(state.weights, dataset, tf.constant(seed))
      encoded.append(self._encode(noisy_sum))
      examples += int(n)
    if encoded:
      total, clipped, summands = aggregation.sum_in_process(encoded, self._cfg)
    else:
      total, clipped, summands = [tf.zeros_like(w) for w in state.weights], 0, 0
    state = tf_rounds.ServerState(
      [tf.constant(w) for w in state.weights],
      [tf.constant(v) for v in state.velocity],
      tf.constant(state.round_num),
    )
    new_state = self._server(state, total, tf.constant(examples, tf.int32))
    measurements = {
      "secure_clipped_count": clipped,
      "secure_summands": summands,
      "secure_bound": np.float32(self._cfg.bound),
      "secure_bits": self._cfg.bits,
    }
    return _numpy_state(new_state), measurements


class InProcessFedAvg:
  """In-process twin of process.build_fedavg_process."""

  def __init__(self, model_fn, initial_weights, image_shape, params):
    del image_shape
    self._initial = initial_weights
    model = model_fn()

    def client(w, ds, s):
      delta, size = tf_rounds.fedavg_client_update(model, w, ds, s, params)
      return [d * size for d in delta], size

    self._client = tf.function(client)
    self._server = tf.function(tf_rounds.fedavg_server_update)

  def initialize(self) -> tf_rounds.ServerState:
    return _numpy_state(tf_rounds.initial_state(self._initial, with_velocity=False))

  def next(self, state, datasets, seeds):
    weighted_sum, total = None, None
    for dataset, seed in zip(datasets, seeds):
      weighted, size = self._client(state.weights, dataset, tf.constant(seed))
      if weighted_sum is None:
        weighted_sum, total = list(weighted), size
      else:
        weighted_sum = [a + b for a, b in zip(weighted_sum, weighted)]
        total = total + size
    if weighted_sum is None:
      weighted_sum, total = [tf.zeros_like(w) for w in state.weights], tf.constant(0.0)
    state = tf_rounds.ServerState(
      [tf.constant(w) for w in state.weights], [], tf.constant(state.round_num)
    )
    return _numpy_state(self._server(state, weighted_sum, total)), {}


class InProcessMaskedDpSgd:
  """In-process twin of process.build_masked_dp_sgd_process (same three parts)."""

  def __init__(self, model_fn, initial_weights, image_shape, params, secure_sum, *, degree, prg):
    del image_shape, degree
    self._initial = initial_weights
    model = model_fn()
    self._client = tf.function(
      lambda w, ds, s, pk, ps, sk: tf_rounds.masked_client_update(
        model, w, ds, s, pk, ps, sk, params, secure_sum, prg
      )
    )
    self._server = tf.function(
      lambda state, code_sum, summands, n: tf_rounds.masked_server_update(
        state, code_sum, summands, n, params, secure_sum
      )
    )

  def initialize(self) -> tf_rounds.ServerState:
    return _numpy_state(tf_rounds.initial_state(self._initial, with_velocity=True))

  def masked_round(self, state, datasets, seeds, pair_keys, pair_signs, self_keys):
    total, examples, clipped = None, 0, 0
    for dataset, *arrays in zip(datasets, seeds, pair_keys, pair_signs, self_keys):
      masked, n, c = self._client(state.weights, dataset, *[tf.constant(a) for a in arrays])
      total = masked if total is None else total + masked
      examples += int(n)
      clipped += int(c)
    return total.numpy(), examples, clipped

  def server_update(self, state, code_sum, summands, num_examples):
    state = tf_rounds.ServerState(
      [tf.constant(w) for w in state.weights],
      [tf.constant(v) for v in state.velocity],
      tf.constant(state.round_num),
    )
    new_state = self._server(
      state,
      tf.constant(code_sum, tf.int64),
      tf.constant(summands, tf.int32),
      tf.constant(num_examples, tf.int32),
    )
    return _numpy_state(new_state)
