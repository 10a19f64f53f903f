"""The SecAgg protocol's parties and phases, simulated in one process.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017), and SecAgg+ (Bell et al., CCS 2020), for the masked sum
of the hospitals' fixed-point codes:

Setup, once per run. Every hospital i makes an X25519 key pair (the
``cryptography`` package) and advertises its public key. The server fixes the
neighbour graph: everyone (SecAgg) or a ring of k neighbours over a random
order (SecAgg+). Hospital i splits its private key into t-of-n Shamir shares
(dopamine_tff/secagg/shamir.py) held by its neighbours and itself.

Each round r:
1. Share: every hospital draws a fresh 32-byte self-mask key b_i (OS CSPRNG) and
   gives its holders t-of-n shares of it.
2. Masked input: every hospital that delivers (set U2) sends
   codes + PRG(b_i) + sum_j +-PRG(k_ij) mod 2**32, where
   k_ij = HKDF-SHA256(X25519(sk_i, pk_j), info = (round, i, j)) and PRG is
   ChaCha20 run in its TF computation (dopamine_tff/secagg/masking.py).
   Hospitals that dropped before this step (U1 \\ U2) sent nothing.
3. Unmask: the hospitals still present (U3, a subset of U2) send, for each
   hospital of U2, its share of b_i, and for each hospital of U1 \\ U2, its
   share of sk_i; never both for one hospital. The server reconstructs from at
   least t shares, removes the survivors' self masks and the dropped
   hospitals' pairwise masks, and is left with the plain sum of U2's codes.
   With fewer than t shares for any needed secret the round aborts
   (:class:`RoundAborted`): nothing is released.

Simulation boundary: one process plays every party, so this object holds all
secrets; the protocol's messages, costs and failure behaviour are real, the
isolation between parties is not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import numpy as np
import tensorflow as tf

from dopamine_tff.secagg import chacha
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import shamir

MODES = ("none", "secagg", "secagg_plus")
_INFO = b"dopamine_tff/secagg/v1/pair-mask"


class RoundAborted(RuntimeError):
  """Too few shares to unmask: the round releases nothing."""


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
  """Secure aggregation of one run.

  Attributes:
    mode: 'secagg' (everyone masks with everyone) or 'secagg_plus' (k
      neighbours on a random ring).
    num_hospitals: K.
    threshold: shares needed to reconstruct a secret (None: a majority of its
      holders, i.e. of K for SecAgg, of k + 1 for SecAgg+).
    neighbours: k of SecAgg+ (None: the even number nearest above log2 K).
    prg: 'chacha20', or 'philox_insecure' (fast, not cryptographic).
    graph_seed: the server's public seed of the SecAgg+ ring order.
  """

  mode: str
  num_hospitals: int
  threshold: int | None = None
  neighbours: int | None = None
  prg: str = "chacha20"
  graph_seed: int = 0

  def __post_init__(self):
    if self.mode not in MODES[1:]:
      raise ValueError(f"secure_aggregation={self.mode!r}: must be one of {MODES[1:]}")
    if self.num_hospitals < 1:
      raise ValueError(f"secure aggregation needs >= 1 hospital, got {self.num_hospitals}")
    if self.prg not in masking.PRGS:
      raise ValueError(f"secagg_prg={self.prg!r}: must be one of {masking.PRGS}")
    if self.neighbours is not None and self.neighbours < 1:
      raise ValueError(f"secagg_neighbours={self.neighbours}: must be >= 1")
    if self.threshold is not None and not 1 <= self.threshold <= self.holders_per_secret:
      raise ValueError(
        f"secagg_threshold={self.threshold}: must be in [1, {self.holders_per_secret}] "
        f"(the holders of each secret)"
      )

  @property
  def degree(self) -> int:
    """Neighbours per hospital."""
    k = self.num_hospitals
    if self.mode == "secagg":
      return k - 1
    wanted = self.neighbours or 2 * math.ceil(math.log2(max(k, 2)) / 2)
    wanted += wanted % 2  # a ring gives each hospital k/2 neighbours per side
    return min(wanted, k - 1)

  @property
  def holders_per_secret(self) -> int:
    return self.degree + 1  # the neighbours and the hospital itself

  @property
  def t(self) -> int:
    return self.threshold or self.holders_per_secret // 2 + 1


def neighbour_graph(cfg: SecAggConfig) -> dict[int, tuple[int, ...]]:
  """Hospital -> its neighbours (symmetric)."""
  k = cfg.num_hospitals
  if cfg.degree >= k - 1:
    return {i: tuple(j for j in range(k) if j != i) for i in range(k)}
  order = np.random.default_rng(cfg.graph_seed).permutation(k)
  pos = {int(h): p for p, h in enumerate(order)}
  half = cfg.degree // 2
  graph = {}
  for i in range(k):
    near = {int(order[(pos[i] + d) % k]) for d in range(-half, half + 1) if d}
    graph[i] = tuple(sorted(near))
  return graph


def _raw(private_key: x25519.X25519PrivateKey) -> bytes:
  return private_key.private_bytes(
    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
  )


def pair_key(secret: bytes, round_num: int, i: int, j: int) -> np.ndarray:
  """HKDF-SHA256 of an X25519 shared secret for (round, pair): ChaCha20 key words."""
  lo, hi = min(i, j), max(i, j)
  info = _INFO + struct.pack(">qqq", round_num, lo, hi)
  key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
  return chacha.key_words(key)


@dataclasses.dataclass
class RoundMessages:
  """What one round's hospitals hold and send (ids are 0-based hospitals)."""

  round_num: int
  self_keys: dict  # hospital -> 32 bytes (its own secret)
  self_shares: dict  # hospital -> {holder id: share}


class Protocol:
  """All parties of a run's secure aggregation (see the module docstring)."""

  def __init__(self, cfg: SecAggConfig):
    self.cfg = cfg
    self.graph = neighbour_graph(cfg)
    k = cfg.num_hospitals
    self._private = {i: x25519.X25519PrivateKey.generate() for i in range(k)}
    self.public = {i: self._private[i].public_key() for i in range(k)}
    self.key_shares = {
      i: shamir.split(shamir.bytes_to_int(_raw(self._private[i])), **self._holders(i))
      for i in range(k)
    }
    self._round: RoundMessages | None = None
    keys = tf.TensorSpec([None, 8], tf.uint32)
    self._masks = tf.function(
      lambda m, sk, pk, ps: self._remove_masks(m, sk, pk, ps, cfg.prg),
      input_signature=[
        tf.TensorSpec([None], tf.int64),
        keys,
        keys,
        tf.TensorSpec([None], tf.int32),
      ],
    )

  def _holders(self, i: int) -> dict:
    return {"threshold": self.cfg.t, "holders": [h + 1 for h in (i, *self.graph[i])]}

  def start_round(self, round_num: int) -> None:
    """Phase 1: fresh self-mask keys, shared among their holders."""
    keys = {i: os.urandom(32) for i in range(self.cfg.num_hospitals)}
    shares = {i: shamir.split(shamir.bytes_to_int(b), **self._holders(i)) for i, b in keys.items()}
    self._round = RoundMessages(round_num, keys, shares)

  def client_inputs(self, hospital: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What hospital `hospital` feeds its TF computation: pair keys, signs, self key."""
    r = self._round
    keys, signs = [], []
    for j in self.graph[hospital]:
      secret = self._private[hospital].exchange(self.public[j])
      keys.append(pair_key(secret, r.round_num, hospital, j))
      signs.append(1 if hospital < j else -1)
    pair_keys = np.stack(keys) if keys else np.zeros([0, 8], np.uint32)
    return pair_keys, np.array(signs, np.int32), chacha.key_words(r.self_keys[hospital])

  def unmask(self, masked_sum, *, senders, responders) -> tuple[np.ndarray, dict]:
    """Phase 3: the plain sum of the senders' codes, or RoundAborted.

    Args:
      masked_sum: int64 [n], the sum of the senders' masked vectors.
      senders: hospitals whose masked vectors are in the sum (U2).
      responders: hospitals that send their shares (U3, within U2).

    Returns:
      (int64 [n] sum of the codes, counts of what was revealed).
    """
    r = self._round
    senders, responders = set(senders), set(responders) & set(senders)
    dropped = set(range(self.cfg.num_hospitals)) - senders
    revealed_seeds = {s: self._reconstruct(r.self_shares[s], responders, s) for s in senders}
    revealed_keys = {d: self._reconstruct(self.key_shares[d], responders, d) for d in dropped}
    if set(revealed_seeds) & set(revealed_keys):  # the protocol's core rule
      raise AssertionError("a hospital's self-mask key and private key were both revealed")
    self_keys = [chacha.key_words(shamir.int_to_bytes(v, 32)) for v in revealed_seeds.values()]
    pair_keys, pair_signs = [], []
    for d, value in revealed_keys.items():
      private = x25519.X25519PrivateKey.from_private_bytes(shamir.int_to_bytes(value, 32))
      for j in self.graph[d]:
        if j in senders:  # j added sign(j, d) * PRG(k_jd); remove it
          pair_keys.append(pair_key(private.exchange(self.public[j]), r.round_num, d, j))
          pair_signs.append(1 if j < d else -1)
    total = self._masks(
      tf.constant(masked_sum, tf.int64),
      tf.constant(np.reshape(self_keys, [-1, 8]), tf.uint32),
      tf.constant(np.reshape(pair_keys, [-1, 8]), tf.uint32),
      tf.constant(np.array(pair_signs, np.int32)),
    )
    stats = {"secagg_revealed_seeds": len(revealed_seeds), "secagg_revealed_keys": len(dropped)}
    return total.numpy(), stats

  def _reconstruct(self, shares: dict, responders: set, owner: int) -> int:
    held = {h: v for h, v in shares.items() if h - 1 in responders}
    try:
      return shamir.reconstruct(held, threshold=self.cfg.t)
    except shamir.NotEnoughShares as e:
      raise RoundAborted(
        f"hospital {owner}'s secret has {len(held)} of the {self.cfg.t} shares needed "
        f"({len(responders)} hospitals answered the unmasking)"
      ) from e

  @staticmethod
  def _remove_masks(masked_sum, self_keys, pair_keys, pair_signs, prg):
    minus_ones = -tf.ones(tf.shape(self_keys)[:1], tf.int32)
    total = masking.add_streams(masked_sum, self_keys, minus_ones, masking.SELF_NONCE, prg)
    total = masking.add_streams(total, pair_keys, -pair_signs, masking.PAIR_NONCE, prg)
    return tf.math.floormod(total, masking.MODULUS)
