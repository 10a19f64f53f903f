"""ChaCha20 keystreams on the host: OpenSSL's, through the ``cryptography`` package.

A cryptographic PRG at memory speed (about 6 GB/s here), for the randomness a
hospital's host makes before its TF computation runs: SecAgg's masks
(dopamine_tff/secagg/masking.py) and the secure sum's pair dithers
(dopamine_tff/quantization.py). The layout is RFC 8439's: block counter in
word 12 (from `counter`), the nonce in words 13-15; the TF implementation in
dopamine_tff/secagg/chacha.py agrees with it bit for bit (tested).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
import numpy as np

KEY_WORDS = 8


def words(key, nonce, num_words: int, out=None, counter: int = 0) -> np.ndarray:
  """`num_words` uint32 keystream words of ChaCha20 keyed by `key` (uint32 [8]).

  With `out` (uint32 [num_words], C-contiguous) the words are written there.
  """
  key = np.asarray(key, "<u4")
  if key.shape != (KEY_WORDS,):
    raise ValueError(f"a ChaCha20 key is {KEY_WORDS} uint32 words, got shape {key.shape}")
  counter_and_nonce = struct.pack("<I", counter) + np.asarray(nonce, "<u4").tobytes()
  encryptor = Cipher(algorithms.ChaCha20(key.tobytes(), counter_and_nonce), mode=None).encryptor()
  out = np.empty(num_words, np.uint32) if out is None else out
  if out.size != num_words or out.dtype != np.uint32:
    raise ValueError(f"out must be uint32 [{num_words}], got {out.dtype} [{out.size}]")
  # The keystream is the encryption of zeros; written in place, no copy.
  encryptor.update_into(_zeros(4 * num_words), memoryview(out).cast("B"))
  return out


_ZEROS: dict[int, bytes] = {}


def _zeros(num_bytes: int) -> bytes:
  if num_bytes not in _ZEROS:
    if len(_ZEROS) > 4:  # a few model sizes per process (masks, dithers)
      _ZEROS.clear()
    _ZEROS[num_bytes] = bytes(num_bytes)
  return _ZEROS[num_bytes]
