"""Masking of a hospital's integer vector: the mask on the host, its addition in-graph.

masked = codes + PRG(self key) + sum_j sign_j * PRG(pair key j)   (mod 2**32)

The mask does not depend on the data, so each hospital makes it on its host
(``host_mask``: OpenSSL's ChaCha20 through ``cryptography``, at memory speed)
and its TF computation adds it to the codes (tf_rounds.masked_client_update):
nothing unmasked leaves that computation, in TFF's C++ worker and in the
in-process runtime alike. ``mask`` is the same arithmetic in TF ops
(dopamine_tff/secagg/chacha.py), kept as the second implementation the tests
compare bit for bit and the benchmark times.

``sign_j`` is +1 when this hospital's id is below j's and -1 otherwise, so each
pair's masks cancel in the sum over hospitals. The result is an int64 tensor
holding values in [0, 2**32): TFF's runtime then adds the hospitals' vectors
with a plain int64 federated sum (K < 2**31 summands cannot overflow int64) and
the server reduces modulo 2**32. The codes themselves live modulo 2**32
(dopamine_tff/quantization.py), so unmasking gives exactly their sum mod 2**32,
which is what the plain secure sum gives.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dopamine_tff import keystream
from dopamine_tff.secagg import chacha

MODULUS = 2**32
PAIR_NONCE = (0, 0, 0)  # each (round, pair) has its own HKDF key
SELF_NONCE = (1, 0, 0)  # self-mask keys are fresh random per round
PRGS = ("chacha20", "philox_insecure")


def prg_words(key, nonce, num_words, prg: str):
  """`num_words` uint32 words of the PRG keyed by `key` (uint32 [8])."""
  if prg == "chacha20":
    return chacha.keystream_words(key, tf.constant(nonce, tf.uint32), num_words)
  if prg == "philox_insecure":
    return chacha.philox_words(key, tf.constant(nonce, tf.uint32), num_words)
  raise ValueError(f"unknown PRG {prg!r}; choose one of {PRGS}")


def prg_int64(key, nonce, num_words, prg: str):
  return tf.cast(prg_words(key, nonce, num_words, prg), tf.int64)


def mask(codes, pair_keys, pair_signs, self_key, prg: str = "chacha20"):
  """Masks a flat int vector (values in [0, 2**32)).

  Args:
    codes: int32/int64 [n], the hospital's fixed-point codes.
    pair_keys: uint32 [M, 8], one ChaCha20 key per neighbour (this round's).
    pair_signs: int32 [M], +1 or -1.
    self_key: uint32 [8], this round's self-mask key.
    prg: 'chacha20' or the insecure 'philox_insecure'.

  Returns:
    int64 [n] in [0, 2**32).
  """
  n = tf.size(codes, out_type=tf.int64)
  total = tf.cast(codes, tf.int64) + prg_int64(self_key, SELF_NONCE, n, prg)
  total = add_streams(total, pair_keys, pair_signs, PAIR_NONCE, prg)
  return tf.math.floormod(total, MODULUS)


def add_streams(total, keys, signs, nonce, prg: str):
  """total + sum_i signs[i] * PRG(keys[i]) in int64 (a loop: small graph)."""
  n = tf.size(total, out_type=tf.int64)

  def body(i, acc):
    sign = tf.cast(signs[i], tf.int64)
    return i + 1, acc + sign * prg_int64(keys[i], nonce, n, prg)

  _, total = tf.while_loop(lambda i, _: i < tf.shape(keys)[0], body, (tf.constant(0), total))
  return total


def host_stream(
  key, nonce, num_words: int, prg: str = "chacha20", out=None, counter: int = 0
) -> np.ndarray:
  """`num_words` uint32 words of the PRG keyed by `key` (uint32 [8]), on the host.

  ChaCha20 is OpenSSL's, laid out as chacha.keystream_words (RFC 8439: block
  counter from 0 in word 12, the nonce in words 13-15), so the two agree bit
  for bit. With `out` (uint32 [num_words]) the words are written there.
  """
  if prg == "philox_insecure":
    words = chacha.philox_words(
      tf.constant(key, tf.uint32), tf.constant(nonce, tf.uint32), num_words
    ).numpy()
    if out is None:
      return words
    out[:] = words
    return out
  if prg != "chacha20":
    raise ValueError(f"unknown PRG {prg!r}; choose one of {PRGS}")
  return keystream.words(key, nonce, num_words, out=out, counter=counter)


def host_mask(num_words: int, pair_keys, pair_signs, self_key, prg: str = "chacha20"):
  """The mask `mask` adds, as uint32 [num_words]: PRG(self) + sum_j sign_j PRG(pair j)."""
  total = host_stream(self_key, SELF_NONCE, num_words, prg)
  return add_host_streams(total, pair_keys, pair_signs, PAIR_NONCE, prg)


_CHUNK = 2**16  # words per pass: a multiple of 16, whole ChaCha20 blocks


def add_host_streams(total, keys, signs, nonce, prg: str = "chacha20") -> np.ndarray:
  """total + sum_i signs[i] * PRG(keys[i]) mod 2**32, in place (uint32 [n])."""
  if prg != "chacha20":  # the insecure TF Philox: whole streams
    stream = np.empty_like(total)
    for key, sign in zip(keys, signs):
      host_stream(key, nonce, total.size, prg, out=stream)
      (np.add if sign > 0 else np.subtract)(total, stream, out=total)
    return total
  # Chunk by chunk, so each stream and the sum stay in the cache (1.3x).
  buf = np.empty(min(_CHUNK, total.size), np.uint32)
  for start in range(0, total.size, _CHUNK):
    acc = total[start : start + _CHUNK]
    part = buf[: acc.size]
    for key, sign in zip(keys, signs):
      host_stream(key, nonce, acc.size, prg, out=part, counter=start // 16)
      (np.add if sign > 0 else np.subtract)(acc, part, out=acc)  # uint32 wraps: mod 2**32
  return total


def host_unmask(masked_sum, self_keys, pair_keys, pair_signs, prg: str = "chacha20"):
  """int64 [n] in [0, 2**32): `masked_sum` minus the revealed self and pair masks."""
  total = np.mod(np.asarray(masked_sum, np.int64), MODULUS).astype(np.uint32)
  total = add_host_streams(total, self_keys, [-1] * len(self_keys), SELF_NONCE, prg)
  total = add_host_streams(total, pair_keys, [-s for s in pair_signs], PAIR_NONCE, prg)
  return total.astype(np.int64)
