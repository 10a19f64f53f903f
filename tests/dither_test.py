"""The plain secure sum's pair dithers: graph, cancellation, correction."""

import itertools

import numpy as np
import pytest

from dopamine_tff import dither
from dopamine_tff import graphs
from dopamine_tff import quantization
from dopamine_tff import seeds
from dopamine_tff.secagg import protocol

WORDS = 50


def _dithers(keys, signs):
  """Each sender's own dither vector (float64 r), as its host makes it."""
  return [
    quantization.dither_value(quantization.host_dither(k, s, WORDS)) for k, s in zip(keys, signs)
  ]


def test_degree_is_about_log2_k_and_more_than_the_colluders():
  assert dither.dither_degree(2) == 1
  assert dither.dither_degree(3) == 2  # complete
  assert dither.dither_degree(5) == 4  # complete
  assert dither.dither_degree(10) == 4  # 2 * ceil(log2(10) / 2), not the 9 of the complete graph
  assert dither.dither_degree(100) == 8  # 2 * ceil(log2(100) / 2)
  assert dither.dither_degree(10, colluders=3) == 6  # d-connected: c + 1 more partners
  ring = dither.dither_graph(100, b"k")
  assert {len(v) for v in ring.values()} == {8}
  assert all(i in ring[j] for i in ring for j in ring[i])  # symmetric


def test_a_split_dither_graph_aborts_the_round_before_any_release():
  """H(4, 10) survives any 3 dropouts; two gaps of two neighbours in its ring cut it."""
  rnd = seeds.Randomness(1, seeded=True)
  order_seed = rnd.secret_bytes(0, seeds.Purpose.SECAGG_GRAPH, -1)
  for gone in itertools.combinations(range(10), 3):  # never raises: 4-connected
    dither.round_dithers(
      rnd, 0, 10, [h for h in range(10) if h not in gone], dither.Correction(WORDS)
    )
  ring = graphs.ring_order(10, order_seed)
  gone = {ring[0], ring[1], ring[5], ring[6]}
  with pytest.raises(protocol.RoundAborted, match="disconnected"):
    dither.round_dithers(
      rnd, 0, 10, [h for h in range(10) if h not in gone], dither.Correction(WORDS)
    )


def test_dithers_cancel_when_everyone_delivers():
  rnd = seeds.Randomness(1, seeded=True)
  keys, signs, correction = dither.round_dithers(
    rnd, 0, 5, [0, 1, 2, 3, 4], dither.Correction(WORDS)
  )
  np.testing.assert_array_equal(correction, np.zeros(WORDS))
  assert all(k.shape == (4, 8) and k.dtype == np.uint32 for k in keys)
  total = np.sum(_dithers(keys, signs), axis=0)
  np.testing.assert_allclose(total, 0.0, atol=1e-12)
  # Not vacuous: each hospital's own dither is far from zero.
  assert np.abs(_dithers(keys, signs)[0]).max() > 0.5


def test_the_correction_is_what_the_senders_dithers_leave_in_the_sum():
  rnd = seeds.Randomness(2, seeded=True)
  senders = [0, 2, 3]  # 1 and 4 did not deliver
  keys, signs, correction = dither.round_dithers(rnd, 3, 5, senders, dither.Correction(WORDS))
  left = np.sum(_dithers(keys, signs), axis=0)
  assert np.abs(left).max() > 0.1
  np.testing.assert_allclose(correction, left, atol=1e-12)


def test_pair_keys_are_shared_and_signs_opposite():
  rnd = seeds.Randomness(3, seeded=True)
  keys, signs, _ = dither.round_dithers(rnd, 0, 3, [0, 1, 2], dither.Correction(WORDS))
  # Hospital 0's partner 1 (index 0) and hospital 1's partner 0 (index 0).
  np.testing.assert_array_equal(keys[0][0], keys[1][0])
  assert signs[0][0] == -signs[1][0] == 1


def test_a_disconnected_ring_aborts_the_round():
  """Two delivering hospitals that are not ring neighbours share no dither:
  each one's code would be readable apart, so the round must not run."""
  rnd = seeds.Randomness(4, seeded=True)
  k = 40
  graph = dither.dither_graph(k, rnd.secret_bytes(0, seeds.Purpose.SECAGG_GRAPH, -1))
  far = next(h for h in range(1, k) if h not in graph[0])
  with pytest.raises(protocol.RoundAborted):
    dither.round_dithers(rnd, 0, k, [0, far], dither.Correction(WORDS))
  # Neighbours are fine: the guard is not always firing.
  dither.round_dithers(rnd, 0, k, [0, graph[0][0]], dither.Correction(WORDS))
