"""The host ChaCha20 keystream: RFC 8439's answer, counters, the in-graph twin, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import keystream
from dopamine_tff.secagg import chacha


def test_rfc8439_a1_test_vector_1():
  zero = keystream.words(np.zeros(8, np.uint32), (0, 0, 0), 16)
  assert zero.astype("<u4").tobytes().hex() == (
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
  )


def test_a_counter_offset_continues_the_same_stream_and_out_is_filled():
  key = chacha.key_words(bytes(range(32)))
  whole = keystream.words(key, (2, 0, 0), 16 * 10)
  out = np.empty(16 * 3, np.uint32)
  got = keystream.words(key, (2, 0, 0), 16 * 3, out=out, counter=4)
  assert got is out
  np.testing.assert_array_equal(out, whole[16 * 4 : 16 * 7])
  # Another nonce is another stream; the in-graph ChaCha20 agrees bit for bit.
  assert not np.array_equal(keystream.words(key, (1, 0, 0), 160), whole)
  ref = chacha.keystream_words(tf.constant(key), tf.constant([2, 0, 0], tf.uint32), 160)
  np.testing.assert_array_equal(whole, ref.numpy())


def test_bad_keys_and_buffers_are_refused():
  with pytest.raises(ValueError, match="8 uint32 words"):
    keystream.words(np.zeros(4, np.uint32), (0, 0, 0), 16)
  with pytest.raises(ValueError, match="out must be uint32"):
    keystream.words(np.zeros(8, np.uint32), (0, 0, 0), 16, out=np.empty(8, np.uint32))
