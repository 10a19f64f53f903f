"""One derivation for every random stream of a run.

Every random draw of a run (a hospital's Poisson mask and Gaussian noise share,
FPDP's local DP-SGD steps, FedAvg's shuffles, dropouts, client selection, the
TF Privacy baseline's per-epoch generator) is keyed by a seed derived here
from (run seed, round, hospital, purpose, index), and only here.

Two levels:

1. Host side, :func:`client_key`: the hospital's key for a round is the first
   16 bytes of SHA-256 over a fixed-format record of (run seed, round,
   hospital), read as two int64 words: 128 bits. Distinct (round, hospital)
   pairs collide with probability about n^2 / 2^129 (n keys), i.e. never.
   :func:`host_rng` derives driver-side generators the same way with a
   hospital of -1 and a purpose.
2. In the hospital's TF computation, :func:`stream`:
   ``fold_in(fold_in(key, purpose), index)`` with int64 fold-in data. TF's
   ``stateless_fold_in(seed, data)`` returns ``[R(seed), data]`` where R draws
   one value of ``data``'s dtype from ``seed``; with int64 data R keeps 64 bits
   (with a Python int, data is int32 and R keeps only 32: the bug this module
   replaces). So a derived seed is (64 bits that depend on every bit of its
   parent, the index); two streams of one key differ by construction, and
   streams of different keys coincide with probability about n^2 / 2^65.

TF's stateless ops scramble the whole 128-bit seed into Philox's key and
counter (a bijection), so distinct seeds give distinct, non-overlapping streams.
tests/noise_freshness_test.py checks the seeds actually fed to the random ops.

In a deployment each hospital would draw its key from its own entropy (the
server never sees it); here one run seed makes runs reproducible and resumable:
a stream depends on the round number, never on how many rounds this process ran.
"""

from __future__ import annotations

import enum
import hashlib
import struct

import numpy as np
import tensorflow as tf

_DOMAIN = b"dopamine_tff/seed/v1"


class Purpose(enum.IntEnum):
  """What a stream is for; part of every derivation."""

  CLIENT = 0  # the hospital's round key itself (host side)
  SAMPLE = 1  # Poisson mask of a DP-SGD step
  NOISE = 2  # Gaussian noise share of a DP-SGD step
  LOCAL_STEP = 3  # parent of FPDP's local DP-SGD step s (index s)
  SHUFFLE = 4  # FedAvg / C epoch order (index: epoch)
  DROPOUT = 5  # which hospitals fail to deliver (host side)
  SELECTION = 6  # which hospitals FedAvg asks (host side)
  TFP_EPOCH = 7  # TF Privacy baseline: batch order and global seed of an epoch
  SECAGG_GRAPH = 8  # the server's public SecAgg+ neighbour order (host side)
  UNMASK_DROPOUT = 9  # which hospitals miss the unmasking (host side)
  DITHER = 10  # a pair's zero-sum dither of the secure-sum encoding (host side)
  AUGMENT = 11  # random flips and shifts of augmentation multiplicity (in-graph)


def _digest(seed: int, round_num: int, hospital: int, purpose: Purpose) -> bytes:
  record = _DOMAIN + struct.pack(">qqqq", int(seed), int(round_num), int(hospital), int(purpose))
  return hashlib.sha256(record).digest()


def client_key(seed: int, round_num: int, hospital: int) -> np.ndarray:
  """Hospital `hospital`'s 128-bit key for 0-based round `round_num`: int64[2]."""
  return np.frombuffer(_digest(seed, round_num, hospital, Purpose.CLIENT)[:16], ">i8").astype(
    np.int64
  )


def pair_key(seed: int, round_num: int, i: int, j: int) -> np.ndarray:
  """The 128-bit key of the dither shared by hospitals i and j in a round: int64[2].

  In a deployment the pair would derive it from its X25519 agreement (HKDF,
  info 'dither'); the simulation derives it from the run seed like the noise.
  """
  lo, hi = min(i, j), max(i, j)
  record = _DOMAIN + struct.pack(">qqqqq", int(seed), int(round_num), lo, hi, int(Purpose.DITHER))
  return np.frombuffer(hashlib.sha256(record).digest()[:16], ">i8").astype(np.int64)


def host_rng(seed: int, round_num: int, purpose: Purpose) -> np.random.Generator:
  """A NumPy generator for a driver-side draw of one round (256-bit entropy)."""
  entropy = int.from_bytes(_digest(seed, round_num, -1, purpose), "big")
  return np.random.default_rng(np.random.SeedSequence(entropy))


def host_int(seed: int, round_num: int, purpose: Purpose, bits: int = 63) -> int:
  """A non-negative integer of `bits` bits for a driver-side seed."""
  value = int.from_bytes(_digest(seed, round_num, -1, purpose), "big")
  return value & ((1 << bits) - 1)


def stream(key, purpose: Purpose, index=0):
  """The seed fed to a stateless random op: int64[2] (see module docstring).

  Args:
    key: int64[2] tensor, a client key or a stream from this function.
    purpose: what the stream is for.
    index: step, epoch or other position (int, or an integer tensor).
  """
  key = tf.cast(key, tf.int64)
  fold = tf.random.experimental.stateless_fold_in
  parent = fold(key, tf.constant(int(purpose), tf.int64))
  return fold(parent, tf.cast(index, tf.int64))
