"""ChaCha20 in TF ops: RFC 8439 known answers and OpenSSL bit for bit."""

import os

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff.secagg import chacha

RFC_KEY = bytes(range(32))
SUNSCREEN = (
  b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
  b"future, sunscreen would be it."
)


def _bytes(words) -> bytes:
  return np.asarray(words).astype("<u4").tobytes()


def test_rfc8439_2_3_2_block_function():
  nonce = bytes.fromhex("000000090000004a00000000")
  out = chacha.blocks(
    chacha.key_words(RFC_KEY), chacha.nonce_words(nonce), tf.constant([1], tf.uint32)
  )
  assert _bytes(out.numpy()).hex() == (
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
  )


def test_rfc8439_2_4_2_encryption():
  nonce = bytes.fromhex("000000000000004a00000000")
  words = chacha.keystream_words(
    chacha.key_words(RFC_KEY), chacha.nonce_words(nonce), len(SUNSCREEN) // 4 + 1, counter=1
  )
  stream = _bytes(words.numpy())[: len(SUNSCREEN)]
  ciphertext = bytes(a ^ b for a, b in zip(SUNSCREEN, stream))
  assert ciphertext.hex() == (
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
  )


def test_rfc8439_a1_all_zero_key():
  words = chacha.keystream_words(np.zeros(8, np.uint32), np.zeros(3, np.uint32), 16)
  assert _bytes(words.numpy()).hex() == (
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
  )


@pytest.mark.parametrize("num_words", [1, 15, 16, 17, 16 * 4096 + 5])
def test_matches_openssl_bit_for_bit(num_words):
  key, nonce = os.urandom(32), os.urandom(12)
  encryptor = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor()
  ref = np.frombuffer(encryptor.update(bytes(4 * num_words)), "<u4")
  got = tf.function(chacha.keystream_words)(
    chacha.key_words(key), chacha.nonce_words(nonce), num_words
  )
  np.testing.assert_array_equal(got.numpy(), ref)


def test_bad_key_and_nonce_lengths():
  with pytest.raises(ValueError, match="32 bytes"):
    chacha.key_words(bytes(16))
  with pytest.raises(ValueError, match="12 bytes"):
    chacha.nonce_words(bytes(8))
