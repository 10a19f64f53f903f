"""The in-process runtime: the same rounds as the TFF processes, in a Python loop.

Calls the very same plain-TF client and server functions
(dopamine_tff/tf_rounds.py) and the same fixed-point encoding
(dopamine_tff/quantization.py) as dopamine_tff/process.py, in this Python
process. Where TensorFlow sees a GPU (``tensorflow[and-cuda]``), the client
and server work runs on it; the PyPI TFF worker is built without CUDA.

The round objects here have the ``initialize()`` / ``run(state, RoundInputs)``
interface of dopamine_tff/process.py's round wrappers, so trainers swap one
for the other.
Integer code sums make the DP-SGD round's aggregation exact in any order;
FedAvg sums floats in client order, as TFF's runtime does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dopamine_tff import aggregation
from dopamine_tff import tf_rounds


def _tensors(arrays) -> list[tf.Tensor]:
  """The round's weights as tensors once, not once per hospital's call."""
  return [tf.constant(a) for a in arrays]


def _numpy_state(state) -> tf_rounds.ServerState:
  return tf_rounds.ServerState(
    [w.numpy() for w in state.weights],
    [v.numpy() for v in state.velocity],
    np.int32(state.round_num),
  )


def _tf_state(state) -> tf_rounds.ServerState:
  return tf_rounds.ServerState(
    [tf.constant(w) for w in state.weights],
    [tf.constant(v) for v in state.velocity],
    tf.constant(state.round_num),
  )


class _EncodedServer:
  """The server step shared by both DP-SGD twins: decode, then momentum SGD."""

  def __init__(self, initial_weights, params, secure_sum):
    self._initial = initial_weights
    self._server = tf.function(
      lambda state, code_sum, correction, n: tf_rounds.encoded_server_update(
        state, code_sum, correction, n, params, secure_sum
      )
    )

  def initialize(self) -> tf_rounds.ServerState:
    return _numpy_state(tf_rounds.initial_state(self._initial, with_velocity=True))

  def server_update(self, state, code_sum, correction, num_examples):
    new_state = self._server(
      _tf_state(state),
      tf.constant(code_sum, tf.int64),
      tf.constant(correction, tf.float64),
      tf.constant(num_examples, tf.int32),
    )
    return _numpy_state(new_state)


class InProcessDpSgd(_EncodedServer):
  """In-process twin of process.dp_sgd_round."""

  def __init__(self, model_fn, initial_weights, image_shape, params, secure_sum, *, dither_degree):
    del image_shape, dither_degree
    super().__init__(initial_weights, params, secure_sum)
    self._words = int(sum(np.size(w) for w in initial_weights))
    model = model_fn()
    self._client = tf.function(
      lambda w, ds, s, r: tf_rounds.encoded_client_update(model, w, ds, s, r, params, secure_sum),
      reduce_retracing=True,  # one trace for hospitals of any size
    )

  def run(self, state, inputs: tf_rounds.RoundInputs):
    codes, examples, changed = [], 0, 0
    weights = _tensors(state.weights)
    per_client = zip(inputs.datasets, inputs.keys, inputs.dithers(self._words))
    for dataset, *arrays in per_client:
      c, n, ch = self._client(weights, dataset, *[tf.constant(a) for a in arrays])
      codes.append(c.numpy())
      examples += int(n)
      changed += int(ch)
    total = aggregation.sum_in_process(codes) if codes else np.zeros(self._words, np.int64)
    new_state = self.server_update(state, total, inputs.correction, examples)
    return new_state, {"secure_clipped_count": changed, "secure_summands": len(codes)}


class InProcessFedAvg:
  """In-process twin of process.fedavg_round."""

  def __init__(self, model_fn, initial_weights, image_shape, params):
    del image_shape
    self._initial = initial_weights
    model = model_fn()

    def client(w, ds, s):
      delta, size = tf_rounds.fedavg_client_update(model, w, ds, s, params)
      return [d * size for d in delta], size

    self._client = tf.function(client, reduce_retracing=True)
    self._server = tf.function(
      lambda state, delta_sum, total: tf_rounds.fedavg_server_update(
        state, delta_sum, total, params.lr_schedule, params.total_rounds, params.frozen
      )
    )

  def initialize(self) -> tf_rounds.ServerState:
    return _numpy_state(tf_rounds.initial_state(self._initial, with_velocity=False))

  def run(self, state, inputs: tf_rounds.RoundInputs):
    weighted_sum, total = None, None
    weights = _tensors(state.weights)
    for dataset, seed in zip(inputs.datasets, inputs.keys):
      weighted, size = self._client(weights, dataset, tf.constant(seed))
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


class InProcessMaskedDpSgd(_EncodedServer):
  """In-process twin of process.build_masked_dp_sgd_process (same three parts)."""

  def __init__(
    self, model_fn, initial_weights, image_shape, params, secure_sum, *, dither_degree, degree, prg
  ):
    del image_shape, dither_degree, degree, prg  # the masks come made (masking.host_mask)
    super().__init__(initial_weights, params, secure_sum)
    model = model_fn()
    self._client = tf.function(
      lambda w, ds, s, r, m: tf_rounds.masked_client_update(
        model, w, ds, s, r, m, params, secure_sum
      ),
      reduce_retracing=True,
    )

  def masked_round(self, state, datasets, *client_arrays):
    total, examples, changed = None, 0, 0
    weights = _tensors(state.weights)
    for dataset, *arrays in zip(datasets, *client_arrays):
      masked, n, c = self._client(weights, dataset, *[tf.constant(a) for a in arrays])
      total = masked.numpy() if total is None else total + masked.numpy()
      examples += int(n)
      changed += int(c)
    return total, examples, changed
