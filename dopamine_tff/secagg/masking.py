"""Plain-TF masking of a hospital's integer vector (runs inside its TF computation).

masked = codes + PRG(self key) + sum_j sign_j * PRG(pair key j)   (mod 2**32)

``sign_j`` is +1 when this hospital's id is below j's and -1 otherwise, so each
pair's masks cancel in the sum over hospitals. The result is an int64 tensor
holding values in [0, 2**32): TFF's runtime then adds the hospitals' vectors
with a plain int64 federated sum (K < 2**31 summands cannot overflow int64) and
the server reduces modulo 2**32. The codes themselves live modulo 2**32
(dopamine_tff/quantization.py), so unmasking gives exactly their sum mod 2**32,
which is what the plain secure sum gives.
"""

from __future__ import annotations

import tensorflow as tf

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
