"""The host mask PRG (OpenSSL ChaCha20): RFC 8439 answers, TF bit for bit, masks cancel."""

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff.secagg import chacha
from dopamine_tff.secagg import masking

RFC_KEY = chacha.key_words(bytes(range(32)))
SUNSCREEN = (
  b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
  b"future, sunscreen would be it."
)


def test_rfc8439_known_answers():
  zero = masking.host_stream(np.zeros(8, np.uint32), (0, 0, 0), 16)  # A.1, test vector 1
  assert zero.astype("<u4").tobytes().hex() == (
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
  )
  nonce = chacha.nonce_words(bytes.fromhex("000000000000004a00000000"))  # 2.4.2, counter 1
  words = masking.host_stream(RFC_KEY, nonce, len(SUNSCREEN) // 4 + 1, counter=1)
  stream = words.astype("<u4").tobytes()[: len(SUNSCREEN)]
  assert (
    bytes(a ^ b for a, b in zip(SUNSCREEN, stream))
    .hex()
    .startswith("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b")
  )


@pytest.mark.parametrize("num_words", [1, 15, 16, 17, 1001, 16 * 4096 + 5])
def test_host_stream_equals_the_tf_chacha20_bit_for_bit(num_words):
  rng = np.random.default_rng(num_words)
  key = rng.integers(0, 2**32, 8, dtype=np.uint32)
  for nonce in (masking.PAIR_NONCE, masking.SELF_NONCE):
    ref = chacha.keystream_words(tf.constant(key), tf.constant(nonce, tf.uint32), num_words)
    np.testing.assert_array_equal(masking.host_stream(key, nonce, num_words), ref.numpy())


@pytest.mark.parametrize("prg", masking.PRGS)
def test_host_mask_is_the_in_graph_mask_and_unmask_inverts_it(prg):
  rng = np.random.default_rng(1)
  n = masking._CHUNK + 3001  # noqa: SLF001  (across a chunk's edge)
  codes = rng.integers(0, 2**32, n)
  pair_keys = rng.integers(0, 2**32, (4, 8), dtype=np.uint32)
  signs = np.array([1, -1, -1, 1], np.int32)
  self_key = rng.integers(0, 2**32, 8, dtype=np.uint32)
  ref = masking.mask(tf.constant(codes), pair_keys, signs, self_key, prg).numpy()
  mask = masking.host_mask(n, pair_keys, signs, self_key, prg)
  assert mask.dtype == np.uint32
  np.testing.assert_array_equal((codes + mask.astype(np.int64)) % 2**32, ref)
  np.testing.assert_array_equal(masking.host_unmask(ref, [self_key], pair_keys, signs, prg), codes)


def test_pair_masks_cancel_in_the_sum_and_a_missing_one_shows():
  """Two hospitals' opposite-signed streams of one pair key cancel mod 2**32."""
  rng = np.random.default_rng(2)
  key = rng.integers(0, 2**32, (1, 8), dtype=np.uint32)
  s0, s1 = (rng.integers(0, 2**32, 8, dtype=np.uint32) for _ in range(2))
  a = masking.host_mask(500, key, [1], s0)
  b = masking.host_mask(500, key, [-1], s1)
  both = masking.host_unmask((a.astype(np.int64) + b), [s0, s1], [], [])
  assert not both.any()
  alone = masking.host_unmask(a.astype(np.int64), [s0], [], [])
  assert alone.any()  # without its partner the pair mask stays: the sum hides it


def test_unknown_prg_is_refused():
  with pytest.raises(ValueError, match="unknown PRG"):
    masking.host_stream(RFC_KEY, (0, 0, 0), 4, "rc4")
