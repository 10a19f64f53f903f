"""The plain secure sum's zero-sum pair dithers: graph, keys and correction.

Without a SecAgg protocol (``--secure_aggregation=none``) each hospital adds,
before encoding its update mod 2**32, a dither r_i = sum_j s_ij U_ij with one
uniform stream U_ij per partner j and signs s_ij = -s_ji, so the dithers
cancel in the sum of everyone who delivered (dopamine_tff/quantization.py
explains why the fixed-point encoding needs them). The server removes the
dithers that no longer cancel, those shared with partners that did not
deliver: the ``correction``.

The graph and the pair keys are fresh secrets each round
(dopamine_tff/seeds.py); the release depends only on the noised total while
the delivering hospitals' graph is connected (``secagg.protocol.check_hidden``).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from dopamine_tff import quantization
from dopamine_tff import seeds
from dopamine_tff.secagg import protocol as secagg_protocol

# Up to this many hospitals the pair dithers use the complete graph; above it a
# Harary ring of about log2 K neighbours over an order drawn afresh each round:
# the finite-precision argument needs only a connected graph, and the complete
# one costs K^2 model-length dither streams a round (measured: a K=100 round 6x
# slower).
DENSE_DITHER_MAX = 32


def dither_degree(k: int) -> int:
  """Dither partners per hospital of the plain secure sum."""
  if k <= DENSE_DITHER_MAX:
    return k - 1
  wanted = 2 * math.ceil(math.log2(k) / 2)
  return min(wanted + wanted % 2, k - 1)


def dither_graph(k: int, order_seed: bytes) -> dict[int, tuple[int, ...]]:
  """Hospital -> its dither partners: complete up to DENSE_DITHER_MAX, else a
  Harary ring over the order keyed by `order_seed` (drawn per round)."""
  if k <= DENSE_DITHER_MAX:
    return {i: tuple(j for j in range(k) if j != i) for i in range(k)}
  return secagg_protocol.harary_graph(k, dither_degree(k), order_seed)


class Correction:
  """The sum of pair dithers that no longer cancel, float64 [num_words]."""

  def __init__(self, num_words: int):
    self.num_words = num_words
    self._dither = tf.function(quantization.dither)

  def __call__(self, lost) -> np.ndarray:
    """`lost`: [(int64[2] key, sign)] of the dithers left in the sum."""
    if not lost:  # everyone delivered: the dithers cancel, nothing to remove
      return np.zeros(self.num_words)
    return self._dither(
      tf.constant(np.reshape([key for key, _ in lost], [-1, 2]), tf.int64),
      tf.constant(np.array([sign for _, sign in lost], np.int32)),
      self.num_words,
    ).numpy()


def round_dithers(
  randomness: seeds.Randomness, round_num: int, k: int, senders, correction: Correction
) -> tuple[list, list, np.ndarray]:
  """Each sender's pair-dither keys and signs, and the server's correction.

  Raises:
    RoundAborted: the senders' dither graph is disconnected (the release
      would then depend on more than the noised total).
  """
  alive = set(senders)
  graph = dither_graph(k, randomness.secret_bytes(round_num, seeds.Purpose.SECAGG_GRAPH, -1))
  pair = randomness.pair_keys(round_num, [(i, j) for i in senders for j in graph[i]])
  keys, signs, lost = [], [], []
  for i in senders:
    near = graph[i]
    keys.append(np.array([pair[min(i, j), max(i, j)] for j in near], np.int64).reshape(-1, 2))
    signs.append(np.array([1 if i < j else -1 for j in near], np.int32))
    lost += [(key, sign) for j, key, sign in zip(near, keys[-1], signs[-1]) if j not in alive]
  secagg_protocol.check_hidden(graph, alive)
  return keys, signs, correction(lost)
