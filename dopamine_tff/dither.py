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
the delivering hospitals' graph is connected (``graphs.check_hidden``).
"""

from __future__ import annotations

import numpy as np

from dopamine_tff import graphs
from dopamine_tff import quantization
from dopamine_tff import seeds


def dither_degree(k: int, colluders: int = 0) -> int:
  """Dither partners per hospital of the plain secure sum (graphs.dither_degree)."""
  return graphs.dither_degree(k, colluders)


def dither_graph(k: int, order_seed: bytes, colluders: int = 0) -> dict[int, tuple[int, ...]]:
  """Hospital -> its dither partners: a Harary graph of about log2 K partners
  over the order keyed by `order_seed` (drawn per round), complete for K <= 5."""
  return graphs.dither_graph(k, dither_degree(k, colluders), order_seed)


class Correction:
  """The sum of pair dithers that no longer cancel, in steps: float64 [num_words]."""

  def __init__(self, num_words: int):
    self.num_words = num_words

  def __call__(self, lost) -> np.ndarray:
    """`lost`: [(uint32[8] key, sign)] of the dithers left in the sum."""
    if not lost:  # everyone delivered: the dithers cancel, nothing to remove
      return np.zeros(self.num_words)
    fixed = quantization.host_dither(
      [key for key, _ in lost], [sign for _, sign in lost], self.num_words
    )
    return quantization.dither_value(fixed)


def round_dithers(
  randomness: seeds.Randomness,
  round_num: int,
  k: int,
  senders,
  correction: Correction,
  colluders: int = 0,
) -> tuple[list, list, np.ndarray]:
  """Each sender's pair-dither keys and signs, and the server's correction.

  Raises:
    RoundAborted: the senders' dither graph is disconnected (the release
      would then depend on more than the noised total).
  """
  alive = set(senders)
  order_seed = randomness.secret_bytes(round_num, seeds.Purpose.SECAGG_GRAPH, -1)
  graph = dither_graph(k, order_seed, colluders)
  pair = randomness.pair_keys(round_num, [(i, j) for i in senders for j in graph[i]])
  keys, signs, lost = [], [], []
  for i in senders:
    near = graph[i]
    keys.append(np.array([pair[min(i, j), max(i, j)] for j in near], np.uint32).reshape(-1, 8))
    signs.append(np.array([1 if i < j else -1 for j in near], np.int32))
    lost += [(key, sign) for j, key, sign in zip(near, keys[-1], signs[-1]) if j not in alive]
  graphs.check_hidden(graph, alive, colluders)
  return keys, signs, correction(lost)
