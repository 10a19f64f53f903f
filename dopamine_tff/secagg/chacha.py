"""ChaCha20 (RFC 8439) written with TensorFlow uint32 ops: an in-graph, cryptographic PRG.

The secure-aggregation masks are generated inside the hospitals' TF
computations, so they run in TFF's C++ worker and in the in-process runtime
alike. Only standard ops are used (add, xor, shifts, or, cast on uint32).
The keystream is laid out as RFC 8439's: block ``counter + i`` gives words
16 i .. 16 i + 15, little-endian words of the serialised state. The known-answer
vectors of RFC 8439 sections 2.3.2 and 2.4.2 are tests, and a cross-check
against OpenSSL's ChaCha20 (through the ``cryptography`` package) covers many
blocks.

TF's Philox (``tf.random.stateless_*``) is a fast counter-based generator but
not a cryptographic PRG; :func:`philox_words` exposes it for the clearly
labelled insecure fast mode only.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# "expand 32-byte k", little-endian words.
CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
KEY_WORDS, NONCE_WORDS = 8, 3


def _rotl(x, n: int):
  return tf.bitwise.bitwise_or(
    tf.bitwise.left_shift(x, tf.constant(n, tf.uint32)),
    tf.bitwise.right_shift(x, tf.constant(32 - n, tf.uint32)),
  )


def _quarter(s, a, b, c, d):
  s[a] = s[a] + s[b]
  s[d] = _rotl(tf.bitwise.bitwise_xor(s[d], s[a]), 16)
  s[c] = s[c] + s[d]
  s[b] = _rotl(tf.bitwise.bitwise_xor(s[b], s[c]), 12)
  s[a] = s[a] + s[b]
  s[d] = _rotl(tf.bitwise.bitwise_xor(s[d], s[a]), 8)
  s[c] = s[c] + s[d]
  s[b] = _rotl(tf.bitwise.bitwise_xor(s[b], s[c]), 7)


def blocks(key, nonce, counters):
  """ChaCha20 blocks for a vector of block counters.

  Args:
    key: uint32 [8] (the 256-bit key as little-endian words).
    nonce: uint32 [3].
    counters: uint32 [B] block counters.

  Returns:
    uint32 [B, 16]: the serialised blocks as little-endian words.
  """
  key = tf.cast(key, tf.uint32)
  nonce = tf.cast(nonce, tf.uint32)
  counters = tf.cast(counters, tf.uint32)
  ones = tf.ones_like(counters)
  init = [tf.constant(c, tf.uint32) * ones for c in CONSTANTS]
  init += [key[i] * ones for i in range(KEY_WORDS)]
  init += [counters] + [nonce[i] * ones for i in range(NONCE_WORDS)]

  def double_round(i, *state):
    s = list(state)
    _quarter(s, 0, 4, 8, 12)  # column round
    _quarter(s, 1, 5, 9, 13)
    _quarter(s, 2, 6, 10, 14)
    _quarter(s, 3, 7, 11, 15)
    _quarter(s, 0, 5, 10, 15)  # diagonal round
    _quarter(s, 1, 6, 11, 12)
    _quarter(s, 2, 7, 8, 13)
    _quarter(s, 3, 4, 9, 14)
    return (i + 1, *s)

  # 20 rounds as 10 double rounds; a loop keeps the graph small to trace.
  _, *s = tf.while_loop(lambda i, *_: i < 10, double_round, (tf.constant(0), *init))
  return tf.stack([a + b for a, b in zip(s, init)], axis=1)


def keystream_words(key, nonce, num_words, counter: int = 0):
  """The first `num_words` uint32 words of the ChaCha20 keystream from `counter`."""
  num_words = tf.convert_to_tensor(num_words, tf.int64)
  num_blocks = (num_words + 15) // 16
  # tf.range has no uint32 kernel on CPU: count in int64, then cast.
  counters = tf.cast(tf.range(num_blocks, dtype=tf.int64) + counter, tf.uint32)
  return tf.reshape(blocks(key, nonce, counters), [-1])[:num_words]


def philox_words(key, nonce, num_words):
  """INSECURE fast mode: uint32 words from TF's Philox keyed by the first words.

  Philox is a statistical PRG, not a cryptographic one: an observer of part of
  the output may predict the rest. Use only to measure or debug, never in a run
  that claims secure aggregation.
  """
  key = tf.cast(key, tf.uint32)
  nonce = tf.cast(nonce, tf.uint32)
  hi = tf.bitwise.left_shift(tf.cast(key[0], tf.int64), tf.constant(32, tf.int64))
  seed = tf.stack(
    [
      tf.bitwise.bitwise_or(hi, tf.cast(key[1], tf.int64)),
      tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(tf.cast(key[2], tf.int64), tf.constant(32, tf.int64)),
        tf.cast(key[3] ^ nonce[0], tf.int64),
      ),
    ]
  )
  words = tf.random.stateless_uniform(
    tf.reshape(tf.cast(num_words, tf.int32), [1]), seed, minval=None, maxval=None, dtype=tf.uint32
  )
  return words


def key_words(key_bytes: bytes) -> np.ndarray:
  """A 32-byte key as RFC 8439's eight little-endian uint32 words."""
  if len(key_bytes) != 32:
    raise ValueError(f"a ChaCha20 key has 32 bytes, got {len(key_bytes)}")
  return np.frombuffer(key_bytes, "<u4").copy()


def nonce_words(nonce_bytes: bytes) -> np.ndarray:
  if len(nonce_bytes) != 12:
    raise ValueError(f"a ChaCha20 nonce has 12 bytes, got {len(nonce_bytes)}")
  return np.frombuffer(nonce_bytes, "<u4").copy()
