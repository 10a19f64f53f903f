"""One derivation for every random stream of a run.

Every random draw of a run (a hospital's Poisson mask and Gaussian noise share,
FPDP's local DP-SGD steps, FedAvg's shuffles, dropouts, client selection, the
TF Privacy baseline's per-epoch generator) is keyed here, and only here: the
secret ones by a :class:`Randomness` (OS CSPRNG by default), the public ones
from (run seed, round, purpose).

Two levels:

1. Host side, :func:`client_key` (the seeded mode; the secret mode draws the
   same 128 bits from the CSPRNG): the hospital's key for a round is the first
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

Two sources of the secret keys (:class:`Randomness`):

* ``secret`` (the default): every secret key (a hospital's round key, so its
  Poisson mask, noise share, FPDP steps and augmentations; the pair dithers of
  the plain secure sum; the TF Privacy baseline's noise seed and batch order;
  the SecAgg key pairs, self masks and graph) is 128 or 256 bits from the OS
  CSPRNG (``secrets``), fresh per hospital and round, held in memory only and
  never written to a file, a log or a checkpoint. Nothing the run writes
  (``--seed`` included) lets anyone regenerate a noise share.
* ``seeded`` (``--insecure_seeded_noise``): the keys are the SHA-256
  derivations below from (run seed, round, hospital). Runs replay and resume
  bit for bit, and ANYONE WHO KNOWS THE SEED CAN REGENERATE AND SUBTRACT EVERY
  NOISE SHARE: the released model is then not differentially private. For
  tests, debugging and paper replication only; summary.json says which mode
  made a run.

``--seed`` always chooses what is not secret: the data split, the initial
weights, the simulated dropouts and FedAvg's client selection (host_rng and
host_int below, which are public by design).

TensorFlow's global seed is set in two places only, both documented here:
``models.initial_weights`` sets it to ``--seed`` to draw the (public) initial
weights; the TF Privacy baseline (trainers/tf_privacy_cdp.py) sets it to
``--seed`` while building its model, and then, before tracing its train
function, to None in the secret mode (each noise kernel then seeds itself
from the OS) or, in the seeded mode, to its per-epoch value (TFP_EPOCH).
Our own trainers' noise never reads the global seed: every draw is stateless.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
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
  SECAGG_GRAPH = 8  # a round's SecAgg+ / dither neighbour order (host side)
  UNMASK_DROPOUT = 9  # which hospitals miss the unmasking (host side)
  DITHER = 10  # a pair's zero-sum dither of the secure-sum encoding (host side)
  AUGMENT = 11  # random flips and shifts of augmentation multiplicity (in-graph)
  SECAGG_KEY = 12  # a hospital's X25519 private key of a round (host side)
  SECAGG_SELF = 13  # a hospital's self-mask key of a round (host side)


def _digest(seed: int, round_num: int, hospital: int, purpose: Purpose) -> bytes:
  record = _DOMAIN + struct.pack(">qqqq", int(seed), int(round_num), int(hospital), int(purpose))
  return hashlib.sha256(record).digest()


def client_key(seed: int, round_num: int, hospital: int) -> np.ndarray:
  """Hospital `hospital`'s 128-bit key for 0-based round `round_num`: int64[2]."""
  return np.frombuffer(_digest(seed, round_num, hospital, Purpose.CLIENT)[:16], ">i8").astype(
    np.int64
  )


def pair_key(seed: int, round_num: int, i: int, j: int) -> np.ndarray:
  """The 256-bit ChaCha20 key of the dither shared by hospitals i and j in a round: uint32[8].

  Seeded mode only (insecure). Under SecAgg the pair derives it from its
  round's X25519 agreement (HKDF, info 'dither'); with the plain sum and secret
  randomness it is 256 bits from the CSPRNG (Randomness.pair_keys).
  """
  lo, hi = min(i, j), max(i, j)
  record = _DOMAIN + struct.pack(">qqqqq", int(seed), int(round_num), lo, hi, int(Purpose.DITHER))
  return _key_words(hashlib.sha256(record).digest())


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


SECRET = "secret"
SEEDED = "seeded"
# What summary.json says beside epsilon.
DESCRIPTIONS = {
  SECRET: "secret: OS CSPRNG, fresh per hospital and round, never written",
  SEEDED: "seeded: not private against anyone who knows the seed",
}
SEEDED_WARNING = (
  "WARNING: --insecure_seeded_noise: every noise share, mask and dither is a function of "
  "--seed; the released model is NOT private against anyone who knows the seed"
)


def _words(data: bytes) -> np.ndarray:
  return np.frombuffer(data[:16], ">i8").astype(np.int64)


def _key_words(data: bytes) -> np.ndarray:
  """32 bytes as a ChaCha20 key: eight little-endian uint32 words."""
  return np.frombuffer(data[:32], "<u4").copy()


class Randomness:
  """Where a run's secret keys come from (see the module docstring).

  Attributes:
    mode: 'secret' (OS CSPRNG) or 'seeded' (a function of `seed`: insecure).
  """

  def __init__(self, seed: int, seeded: bool = False):
    self._seed = int(seed)
    self.mode = SEEDED if seeded else SECRET

  @property
  def seeded(self) -> bool:
    return self.mode == SEEDED

  @property
  def description(self) -> str:
    return DESCRIPTIONS[self.mode]

  def __repr__(self):  # the seed of a seeded run is in hparams.json anyway
    return f"Randomness(mode={self.mode!r})"

  def client_key(self, round_num: int, hospital: int) -> np.ndarray:
    """A hospital's 128-bit key of a round: int64[2] (fresh from the CSPRNG when secret)."""
    if self.seeded:
      return client_key(self._seed, round_num, hospital)
    return _words(secrets.token_bytes(16))

  def pair_keys(self, round_num: int, pairs) -> dict:
    """(lo, hi) -> the pair's 256-bit dither key (uint32[8]) of a round, for each of `pairs`."""
    out = {}
    for i, j in pairs:
      lo, hi = min(i, j), max(i, j)
      if (lo, hi) not in out:
        out[lo, hi] = (
          pair_key(self._seed, round_num, lo, hi)
          if self.seeded
          else _key_words(secrets.token_bytes(32))
        )
    return out

  def secret_bytes(self, round_num: int, purpose: Purpose, index: int, length: int = 32) -> bytes:
    """`length` secret bytes of a round (a SecAgg key, a graph seed, ...)."""
    if not self.seeded:
      return secrets.token_bytes(length)
    record = _DOMAIN + struct.pack(
      ">qqqqq", self._seed, int(round_num), int(index), int(purpose), length
    )
    out, counter = b"", 0
    while len(out) < length:
      out += hashlib.sha256(record + struct.pack(">q", counter)).digest()
      counter += 1
    return out[:length]

  def rng(self, round_num: int, purpose: Purpose) -> np.random.Generator:
    """A NumPy generator for a secret draw of one round (256 bits of entropy)."""
    if self.seeded:
      return host_rng(self._seed, round_num, purpose)
    return np.random.default_rng(np.random.SeedSequence(secrets.randbits(256)))
