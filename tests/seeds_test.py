"""dopamine_tff/seeds.py: secret keys by default, a labelled seeded replay on request."""

import numpy as np
import tensorflow as tf

from dopamine_tff import seeds


def test_secret_keys_are_fresh_and_not_the_seeds_derivation():
  rnd = seeds.Randomness(7)
  assert rnd.mode == seeds.SECRET and not rnd.seeded
  a, b = rnd.client_key(0, 0), rnd.client_key(0, 0)
  assert a.dtype == np.int64 and a.shape == (2,)
  assert not np.array_equal(a, b)  # a new key per call: nothing to replay
  assert not np.array_equal(a, seeds.client_key(7, 0, 0))
  assert rnd.secret_bytes(0, seeds.Purpose.SECAGG_KEY, 1) != rnd.secret_bytes(
    0, seeds.Purpose.SECAGG_KEY, 1
  )
  assert "7" not in repr(rnd) and "secret" in rnd.description


def test_seeded_mode_replays_and_says_so():
  rnd = seeds.Randomness(7, seeded=True)
  assert rnd.seeded and "not private" in rnd.description
  np.testing.assert_array_equal(rnd.client_key(3, 2), seeds.client_key(7, 3, 2))
  assert rnd.secret_bytes(1, seeds.Purpose.SECAGG_GRAPH, -1) == seeds.Randomness(
    7, seeded=True
  ).secret_bytes(1, seeds.Purpose.SECAGG_GRAPH, -1)
  # Different rounds, hospitals, purposes and seeds never share a key.
  keys = {tuple(seeds.client_key(s, r, h)) for s in (0, 1) for r in range(20) for h in range(10)}
  assert len(keys) == 2 * 20 * 10


def test_pair_keys_are_one_per_unordered_pair():
  rnd = seeds.Randomness(1, seeded=True)
  keys = rnd.pair_keys(0, [(0, 1), (1, 0), (2, 1)])
  assert set(keys) == {(0, 1), (1, 2)}
  np.testing.assert_array_equal(keys[0, 1], seeds.pair_key(1, 0, 0, 1))


def test_streams_differ_by_purpose_and_index():
  key = tf.constant(seeds.client_key(0, 0, 0))
  got = {
    (p, i): tuple(seeds.stream(key, p, i).numpy())
    for p in (seeds.Purpose.SAMPLE, seeds.Purpose.NOISE)
    for i in range(3)
  }
  assert len(set(got.values())) == len(got)
  # The same inputs give the same stream (it is a pure function of the key).
  again = tuple(seeds.stream(key, seeds.Purpose.NOISE, 2).numpy())
  assert again == got[seeds.Purpose.NOISE, 2]
