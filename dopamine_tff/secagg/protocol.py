"""The SecAgg protocol's parties and phases, simulated in one process.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017), and SecAgg+ (Bell et al., CCS 2020), for the masked sum
of the hospitals' fixed-point codes. Their security argument is per
execution, so EVERY ROUND IS A FRESH PROTOCOL INSTANCE (:meth:`start_round`):

1. Advertise and share keys: every hospital i makes a new X25519 key pair
   (the ``cryptography`` package) and a new 32-byte self-mask key b_i, and
   gives each of its holders (its neighbours and itself) a t-of-n Shamir
   share of both (dopamine_tff/secagg/shamir.py). SecAgg+ draws a new
   neighbour graph (a Harary graph over a fresh random order) for the round.
2. Masked input: every hospital that delivers (set U2) sends
   codes + PRG(b_i) + sum_j +-PRG(k_ij) mod 2**32, where
   k_ij = HKDF-SHA256(X25519(sk_i, pk_j), info = (round, i, j)) and PRG is
   ChaCha20 run in its TF computation (dopamine_tff/secagg/masking.py). The
   pair's dither key (dopamine_tff/quantization.py) comes from the same
   agreement under its own HKDF info. Hospitals that dropped before this step
   (U1 \\ U2) sent nothing.
3. Unmask: before any share is revealed the round checks that every secret it
   will need has at least t holders among the responders (U3) and that the
   delivering hospitals' graph keeps every update hidden (connected, each
   sender with more surviving neighbours than the assumed colluders);
   otherwise it aborts with NOTHING revealed (:class:`RoundAborted`). Each
   responder then sends, for each hospital of U2, its share of b_i, and for
   each hospital of U1 \\ U2, its share of sk_i. Each holder keeps a record
   of what it revealed and refuses to reveal the second secret of a (round,
   hospital) whose first it already revealed (:meth:`respond`): the
   protocol's core rule, enforced where a malicious server would attack it.
   A finished round's secrets are deleted with its instance, so its record
   is closed and dropped (run-long totals stay in ``revealed_counts``).
   The server reconstructs from the responders' shares (c + 2 shares beyond t
   are checked; a bad one aborts the round, naming its holder), removes the
   self masks and the dropped hospitals' pairwise masks, and is left with the
   plain sum of U2's codes.

Because keys are fresh each round, a private key revealed for a dropout
unmasks nothing in any other round.

Parameters (:class:`SecAggConfig`): SecAgg uses the complete graph and a
threshold t (default: a majority of K). SecAgg+ derives its degree k and t
from K, an assumed adversarial fraction gamma and dropout rate delta for 40
bits of security and 20 of correctness, as Bell et al. and Google's
federated-compute parameter finder do (:func:`harary_parameters`); explicit
values are checked against the same bounds. ``colluders`` (c hospitals
colluding with the server) must stay below t (and below gamma K for
SecAgg+): the run refuses any c its bounds do not cover.

Simulation boundary: one process plays every party, so this object holds all
secrets; the protocol's messages, costs, refusals and failure behaviour are
real, the isolation between parties is not. Where the keys come from is set
by a ``seeds.Randomness``: the OS CSPRNG by default.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import numpy as np
from scipy import stats
import tensorflow as tf

from dopamine_tff import seeds
from dopamine_tff.secagg import chacha
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import shamir

MODES = ("none", "secagg", "secagg_plus")
_INFO = b"dopamine_tff/secagg/v1/pair-mask"
_DITHER_INFO = b"dopamine_tff/secagg/v1/pair-dither"
SECURITY_BITS = 40  # statistical security of SecAgg+'s parameters (Bell et al.)
CORRECTNESS_BITS = 20  # chance of an abort when the dropout assumption holds
_SMALL = 1e-14  # keeps floor(rate * K) from rounding down across an integer


class RoundAborted(RuntimeError):
  """The round cannot be unmasked safely: it releases nothing."""


class UpdateNotEncodable(RoundAborted):
  """A hospital's update had a non-finite or out-of-range coordinate: the round
  is abandoned (only this flag, never the count, leaves the hospitals)."""


class ProtocolViolation(RoundAborted):
  """A request an honest holder refuses (e.g. both secrets of one hospital)."""


# ---------------------------------------------------------------------------
# Parameters: Harary-graph degree and Shamir threshold from the threat model.


def _log_disconnected(k: int, degree: int, bad: int) -> float:
  """log of a bound on P(a random Harary graph H(degree, k) loses connectivity
  when `bad` uniformly placed nodes are removed).

  Disconnecting a Harary graph takes two runs of degree/2 consecutive removed
  nodes on its ring; union bound over the k (k - degree - 1) / 2 pairs of run
  positions, each fully removed with probability C(k - degree, bad - degree)
  / C(k, bad) (Bell et al. 2020; the federated-compute finder's bound).
  """
  if degree > bad:
    return -math.inf
  pairs = math.log(k) + math.log(max(k - degree - 1, 1)) - math.log(2)
  return (
    pairs
    + math.lgamma(bad + 1)
    + math.lgamma(k - degree + 1)
    - math.lgamma(k + 1)
    - math.lgamma(bad - degree + 1)
  )


@dataclasses.dataclass(frozen=True)
class Guarantee:
  """Failure probabilities (log2) of a SecAgg instance under its assumptions."""

  security_log2: float  # P(some update exposed to server + adversaries)
  correctness_log2: float  # P(a round aborts though the dropout rate holds)

  def to_json(self) -> dict:
    def fmt(x):
      return None if x == -math.inf else round(x, 2)

    return {
      "security_failure_log2": fmt(self.security_log2),
      "correctness_failure_log2": fmt(self.correctness_log2),
    }


def _log2(p: float) -> float:
  return math.log2(p) if p > 0 else -math.inf


def guarantee(k: int, degree: int, t: int, gamma: float, delta: float) -> Guarantee:
  """The failure probabilities of (degree, t) for K=k, adversarial fraction
  gamma and dropout rate delta (union bounds over the k hospitals)."""
  adversaries = math.floor((gamma + _SMALL) * k)
  survivors = math.ceil((1 - delta - _SMALL) * k)
  if degree >= k - 1:  # complete graph: deterministic under the assumptions
    sec = 0.0 if adversaries >= t else -math.inf
    cor = 0.0 if survivors < t else -math.inf
    return Guarantee(sec, cor)
  log_disc = _log_disconnected(k, degree, adversaries + k - survivors)
  # A hospital is exposed when t of its neighbours are adversarial.
  p_adv = k * float(stats.hypergeom.sf(t - 1, k, adversaries, degree))
  sec = _log2(min(1.0, math.exp(log_disc) + p_adv))
  # A round aborts when fewer than t of a hospital's neighbours survive.
  p_short = k * float(stats.hypergeom.cdf(t - 1, k, survivors, degree))
  return Guarantee(sec, _log2(min(1.0, p_short)))


def harary_parameters(k: int, gamma: float, delta: float) -> tuple[int, int] | None:
  """The smallest even degree and its smallest threshold that meet 2^-40
  security and 2^-20 correctness (None: no degree below k - 1 does).

  For a degree: the graph of honest survivors must stay connected with
  probability 1 - 2^-41; t - 1 must bound the adversarial neighbours of
  every hospital but with probability 2^-41 (t = t1 + 1), and t the surviving
  ones but with probability 2^-20 (t <= t2).
  """
  adversaries = math.floor((gamma + _SMALL) * k)
  survivors = math.ceil((1 - delta - _SMALL) * k)
  per_event = math.log(2.0 ** -(SECURITY_BITS + 1))
  for degree in range(2, k - 1, 2):
    if _log_disconnected(k, degree, adversaries + k - survivors) >= per_event:
      continue
    adv = stats.hypergeom(k, adversaries, degree)
    alive = stats.hypergeom(k, survivors, degree)
    # t1: the smallest x with P(adversarial neighbours > x) <= 2^-41 / k.
    xs = np.arange(degree + 1)
    t1 = int(xs[adv.sf(xs) <= 2.0 ** -(SECURITY_BITS + 1) / k][0])
    # t2: the smallest x with P(surviving neighbours <= x) >= 2^-20 / k.
    ok = alive.cdf(xs) >= 2.0**-CORRECTNESS_BITS / k
    t2 = int(xs[ok][0]) if ok.any() else degree
    if t2 > t1:
      return degree, max(t1 + 1, 2)
  return None


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
  """Secure aggregation of one run.

  Attributes:
    mode: 'secagg' (everyone masks with everyone) or 'secagg_plus' (k
      neighbours on a Harary graph resampled every round).
    num_hospitals: K.
    threshold: shares needed to reconstruct a secret (None: a majority of K
      for SecAgg; derived for SecAgg+). Must be >= 2.
    neighbours: k of SecAgg+ (None: derived). Even.
    prg: 'chacha20', or 'philox_insecure' (fast, not cryptographic).
    adversarial_fraction: gamma, the share of hospitals assumed corrupted
      (colluding with the server) that SecAgg+'s parameters must withstand.
    dropout_rate: delta, the share of hospitals assumed to drop in a round.
    colluders: c, the hospitals the run's colluder ledger assumes; refused
      when c >= t, or (SecAgg+) c > gamma K.
  """

  mode: str
  num_hospitals: int
  threshold: int | None = None
  neighbours: int | None = None
  prg: str = "chacha20"
  adversarial_fraction: float = 0.05
  dropout_rate: float = 0.33
  colluders: int = 0

  def __post_init__(self):
    k = self.num_hospitals
    if self.mode not in MODES[1:]:
      raise ValueError(f"secure_aggregation={self.mode!r}: must be one of {MODES[1:]}")
    if k < 1:
      raise ValueError(f"secure aggregation needs >= 1 hospital, got {k}")
    if self.prg not in masking.PRGS:
      raise ValueError(f"secagg_prg={self.prg!r}: must be one of {masking.PRGS}")
    if not 0.0 <= self.adversarial_fraction < 1.0:
      raise ValueError(
        f"secagg_adversarial_fraction={self.adversarial_fraction}: must be in [0, 1)"
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"secagg_dropout_rate={self.dropout_rate}: must be in [0, 1)")
    if self.adversarial_fraction + self.dropout_rate > 0.9:
      raise ValueError(
        f"secagg_adversarial_fraction + secagg_dropout_rate = "
        f"{self.adversarial_fraction + self.dropout_rate:.3g}: must be <= 0.9 for any "
        "SecAgg+ parameters to exist"
      )
    if self.neighbours is not None:
      if self.mode != "secagg_plus":
        raise ValueError("secagg_neighbours applies to secagg_plus only")
      if self.neighbours < 2 or self.neighbours % 2 or self.neighbours > k - 1:
        lo = max(2, self.neighbours - self.neighbours % 2)
        raise ValueError(
          f"secagg_neighbours={self.neighbours}: must be even, in [2, {k - 1}] (the ring gives "
          f"k/2 neighbours per side); nearest valid: {sorted({min(lo, k - 1), min(lo + 2, k - 1)})}"
        )
    degree, derived_t = self._parameters()
    object.__setattr__(self, "_degree", degree)
    t = self.threshold if self.threshold is not None else derived_t
    object.__setattr__(self, "_t", t)
    holders = degree + 1
    if self.threshold is not None and not 2 <= self.threshold <= holders:
      raise ValueError(
        f"secagg_threshold={self.threshold}: must be in [2, {holders}] (the holders of each "
        "secret); with t = 1 any single holder recovers a hospital's keys"
      )
    if self.colluders >= t:
      raise ValueError(
        f"assumed_colluders={self.colluders}: must be below the Shamir threshold t={t}, "
        f"since {t} colluding holders reconstruct a victim's keys and unmask its update"
      )
    if self.mode == "secagg_plus" and self.colluders > math.floor(
      (self.adversarial_fraction + _SMALL) * k
    ):
      raise ValueError(
        f"assumed_colluders={self.colluders}: SecAgg+'s parameters assume at most "
        f"{math.floor((self.adversarial_fraction + _SMALL) * k)} corrupted hospitals "
        f"(secagg_adversarial_fraction={self.adversarial_fraction} of {k}); raise it"
      )
    g = self.guarantee
    if self.mode == "secagg_plus" and g.security_log2 > -SECURITY_BITS:
      raise ValueError(
        f"secagg_plus with {degree} neighbours and threshold {t}: an update is exposed with "
        f"probability 2^{g.security_log2:.1f} > 2^-{SECURITY_BITS} under "
        f"secagg_adversarial_fraction={self.adversarial_fraction}, "
        f"secagg_dropout_rate={self.dropout_rate}; leave --secagg_neighbours and "
        "--secagg_threshold unset to derive them"
      )

  def _parameters(self) -> tuple[int, int]:
    k = self.num_hospitals
    complete = (k - 1, k // 2 + 1 if k > 1 else 1)
    if self.mode == "secagg":
      return complete
    if self.neighbours is not None:
      degree = self.neighbours
      if self.threshold is not None:
        return degree, self.threshold
      found = harary_parameters(k, self.adversarial_fraction, self.dropout_rate)
      t = found[1] if found and found[0] <= degree else (degree + 1) // 2 + 1
      return degree, min(t, degree + 1)
    found = harary_parameters(k, self.adversarial_fraction, self.dropout_rate)
    return found if found is not None else complete

  @property
  def degree(self) -> int:
    """Neighbours per hospital."""
    return self._degree

  @property
  def holders_per_secret(self) -> int:
    return self.degree + 1  # the neighbours and the hospital itself

  @property
  def t(self) -> int:
    return self._t

  @property
  def complete(self) -> bool:
    return self.degree >= self.num_hospitals - 1

  @property
  def guarantee(self) -> Guarantee:
    return guarantee(
      self.num_hospitals, self.degree, self.t, self.adversarial_fraction, self.dropout_rate
    )

  def to_json(self) -> dict:
    """Assumptions and failure probabilities (for summary.json)."""
    return {
      "mode": self.mode,
      "num_hospitals": self.num_hospitals,
      "neighbours": self.degree,
      "graph": "complete" if self.complete else "Harary, resampled every round",
      "threshold": self.t,
      "holders_per_secret": self.holders_per_secret,
      "assumed_adversarial_fraction": self.adversarial_fraction,
      "assumed_dropout_rate": self.dropout_rate,
      "assumed_colluders": self.colluders,
      "threat_model": (
        f"semi-honest server; updates hidden against it with up to {self.colluders} colluding "
        f"hospitals (checked every round); keys secret against any {self.t - 1}"
        if self.complete
        else "semi-honest server; updates hidden against it with up to "
        f"{math.floor((self.adversarial_fraction + _SMALL) * self.num_hospitals)} corrupted "
        f"hospitals but with probability 2^{self.guarantee.security_log2:.1f}"
      )
      + "; keys, shares and graph fresh every round",
      "prg": self.prg,
      **self.guarantee.to_json(),
    }


def neighbour_graph(cfg: SecAggConfig, order_seed: bytes = b"") -> dict[int, tuple[int, ...]]:
  """Hospital -> its neighbours (symmetric): complete, or a Harary graph of
  even degree over the random order keyed by `order_seed` (32 secret bytes)."""
  k = cfg.num_hospitals
  if cfg.degree >= k - 1:
    return {i: tuple(j for j in range(k) if j != i) for i in range(k)}
  return harary_graph(k, cfg.degree, order_seed)


def harary_graph(k: int, degree: int, order_seed: bytes) -> dict[int, tuple[int, ...]]:
  """H(degree, k) over a random order: each hospital's degree/2 ring neighbours per side."""
  rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(order_seed or b"\0", "big")))
  order = rng.permutation(k)
  pos = {int(h): p for p, h in enumerate(order)}
  half = degree // 2
  graph = {}
  for i in range(k):
    near = {int(order[(pos[i] + d) % k]) for d in range(-half, half + 1) if d}
    graph[i] = tuple(sorted(near))
  return graph


def check_hidden(graph: dict, alive, colluders: int = 0, exact_limit: int = 20_000) -> None:
  """RoundAborted unless the delivering hospitals' graph hides every update.

  The server learns the sum of every connected component of the honest
  delivering hospitals (pair masks with dropped hospitals are removed, those
  with colluders known). So: each hospital must have more than `colluders`
  delivering neighbours, and the graph on `alive` must stay connected after
  removing any `colluders` of them (checked exactly while the subsets number
  at most `exact_limit`; beyond, the probabilistic bound of the parameters
  covers it).
  """
  alive = set(alive)
  if len(alive) <= 1:
    return
  for i in alive:
    live = sum(1 for j in graph[i] if j in alive)
    if live <= colluders:
      raise RoundAborted(
        f"hospital {i} has {live} delivering neighbours, not more than the "
        f"{colluders} assumed colluders: its update would be exposed"
      )

  def connected(nodes):
    if not nodes:
      return True
    start = min(nodes)
    seen, todo = {start}, [start]
    while todo:
      for j in graph[todo.pop()]:
        if j in nodes and j not in seen:
          seen.add(j)
          todo.append(j)
    return seen == nodes

  if not connected(alive):
    raise RoundAborted(
      "the delivering hospitals' graph is disconnected: a partial sum would be released"
    )
  if colluders and math.comb(len(alive), colluders) <= exact_limit:
    for removed in itertools.combinations(sorted(alive), colluders):
      if not connected(alive - set(removed)):
        raise RoundAborted(
          f"removing {colluders} hospital(s) {list(removed)} disconnects the delivering "
          "hospitals' graph: colluders could learn a partial sum"
        )


def _raw(private_key: x25519.X25519PrivateKey) -> bytes:
  return private_key.private_bytes(
    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
  )


def _derive(secret: bytes, info: bytes, round_num: int, i: int, j: int, length: int) -> bytes:
  lo, hi = min(i, j), max(i, j)
  info = info + struct.pack(">qqq", round_num, lo, hi)
  return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def pair_key(secret: bytes, round_num: int, i: int, j: int) -> np.ndarray:
  """HKDF-SHA256 of an X25519 shared secret for (round, pair): ChaCha20 key words."""
  return chacha.key_words(_derive(secret, _INFO, round_num, i, j, 32))


def dither_key(secret: bytes, round_num: int, i: int, j: int) -> np.ndarray:
  """The pair's 128-bit dither key from the same agreement (own HKDF info): int64[2]."""
  return np.frombuffer(_derive(secret, _DITHER_INFO, round_num, i, j, 16), ">i8").astype(np.int64)


@dataclasses.dataclass(repr=False)
class RoundMessages:
  """One protocol instance: what the round's hospitals hold (secrets: no repr)."""

  round_num: int
  graph: dict
  private: dict  # hospital -> X25519 private key (its own secret)
  public: dict  # hospital -> X25519 public key (advertised)
  self_keys: dict  # hospital -> 32 bytes (its own secret)
  key_shares: dict  # hospital -> shamir.Shares of its private key
  self_shares: dict  # hospital -> shamir.Shares of its self-mask key

  def __repr__(self):
    return f"RoundMessages(round={self.round_num}, hospitals={len(self.public)}, secrets hidden)"

  __str__ = __repr__


SELF, KEY = "self-mask key", "private key"


class Protocol:
  """All parties of a run's secure aggregation (see the module docstring)."""

  def __init__(self, cfg: SecAggConfig, randomness: seeds.Randomness | None = None):
    self.cfg = cfg
    self.randomness = randomness or seeds.Randomness(0)
    # Per holder: (round, owner) -> which secret it revealed. A round's
    # secrets and shares are deleted with its instance (start_round), so its
    # record is closed then and dropped (memory stays one round's worth);
    # `revealed_counts` keeps the run-long totals.
    self.revealed: dict[int, dict[tuple[int, int], str]] = {}
    self.revealed_counts = {SELF: 0, KEY: 0}
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

  def __repr__(self):
    return f"Protocol({self.cfg.mode}, K={self.cfg.num_hospitals}, t={self.cfg.t})"

  @property
  def graph(self) -> dict:
    """This round's neighbour graph."""
    if self._round is None:
      raise RuntimeError("no round started")
    return self._round.graph

  def _holders(self, i: int, graph) -> dict:
    return {"threshold": self.cfg.t, "holders": [h + 1 for h in (i, *graph[i])]}

  def start_round(self, round_num: int) -> None:
    """Phase 1 of a fresh instance: graph, key pairs, self-mask keys and shares."""
    cfg, rnd, k = self.cfg, self.randomness, self.cfg.num_hospitals
    graph = neighbour_graph(cfg, rnd.secret_bytes(round_num, seeds.Purpose.SECAGG_GRAPH, -1))
    private = {
      i: x25519.X25519PrivateKey.from_private_bytes(
        rnd.secret_bytes(round_num, seeds.Purpose.SECAGG_KEY, i)
      )
      for i in range(k)
    }
    public = {i: private[i].public_key() for i in range(k)}
    self_keys = {i: rnd.secret_bytes(round_num, seeds.Purpose.SECAGG_SELF, i) for i in range(k)}
    key_shares = {
      i: shamir.split(shamir.bytes_to_int(_raw(private[i])), **self._holders(i, graph))
      for i in range(k)
    }
    self_shares = {
      i: shamir.split(shamir.bytes_to_int(b), **self._holders(i, graph))
      for i, b in self_keys.items()
    }
    self._round = RoundMessages(
      round_num, graph, private, public, self_keys, key_shares, self_shares
    )
    self.revealed = {
      h: {key: kind for key, kind in rec.items() if key[0] == round_num}
      for h, rec in self.revealed.items()
    }

  def public_keys(self) -> dict:
    """What the server receives in the advertise phase (raw public keys)."""
    return {
      i: pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
      for i, pk in self._round.public.items()
    }

  def client_inputs(self, hospital: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What hospital `hospital` feeds its TF computation: pair keys, signs, self key."""
    r = self._round
    keys, signs = [], []
    for j in r.graph[hospital]:
      secret = r.private[hospital].exchange(r.public[j])
      keys.append(pair_key(secret, r.round_num, hospital, j))
      signs.append(1 if hospital < j else -1)
    pair_keys = np.stack(keys) if keys else np.zeros([0, 8], np.uint32)
    return pair_keys, np.array(signs, np.int32), chacha.key_words(r.self_keys[hospital])

  def dither_inputs(self, hospital: int) -> tuple[np.ndarray, np.ndarray]:
    """Hospital `hospital`'s pair-dither keys (int64 [M, 2]) and signs, from its agreements."""
    r = self._round
    near = r.graph[hospital]
    keys = [
      dither_key(r.private[hospital].exchange(r.public[j]), r.round_num, hospital, j) for j in near
    ]
    signs = np.array([1 if hospital < j else -1 for j in near], np.int32)
    return np.array(keys, np.int64).reshape(-1, 2), signs

  def respond(self, holder: int, request: dict) -> dict:
    """An honest holder's answer to the server's unmasking request.

    Args:
      holder: the responding hospital.
      request: {SELF: owners whose self-mask share is asked, KEY: owners whose
        private-key share is asked}, for the current round.

    Returns:
      {(kind, owner): share} for the owners whose secret the holder holds.

    Raises:
      ProtocolViolation: the request asks for both secrets of one owner, or
        for the other secret of an owner whose first this holder revealed.
    """
    r = self._round
    record = self.revealed.setdefault(holder, {})
    asked = [(SELF, o) for o in request.get(SELF, ())] + [(KEY, o) for o in request.get(KEY, ())]
    for kind, owner in asked:
      before = record.get((r.round_num, owner))
      both = SELF in request and KEY in request and owner in request[SELF] and owner in request[KEY]
      if both or (before is not None and before != kind):
        raise ProtocolViolation(
          f"hospital {holder} refuses: round {r.round_num + 1} asks for both the self-mask key "
          f"and the private key of hospital {owner}"
        )
    out = {}
    for kind, owner in asked:
      shares = (r.self_shares if kind == SELF else r.key_shares)[owner]
      if holder + 1 in shares:
        record[(r.round_num, owner)] = kind
        self.revealed_counts[kind] += 1
        out[(kind, owner)] = shares[holder + 1]
    return out

  def unmask(self, masked_sum, *, senders, responders) -> tuple[np.ndarray, dict]:
    """Phase 3: the plain sum of the senders' codes, or RoundAborted with nothing revealed.

    Args:
      masked_sum: int64 [n], the sum of the senders' masked vectors.
      senders: hospitals whose masked vectors are in the sum (U2).
      responders: hospitals that send their shares (U3, within U2).

    Returns:
      (int64 [n] sum of the codes, counts of what was revealed and the
      dropped hospitals' dither keys with their senders as
      ``"lost_dithers"``: [(int64[2] key, sign seen by the sender)]).
    """
    r, cfg = self._round, self.cfg
    senders, responders = set(senders), set(responders) & set(senders)
    dropped = set(range(cfg.num_hospitals)) - senders
    # Checks before anything is revealed.
    check_hidden(r.graph, senders, cfg.colluders)
    for kind, owners in ((SELF, senders), (KEY, dropped)):
      for owner in sorted(owners):
        holders = {h - 1 for h in (r.self_shares if kind == SELF else r.key_shares)[owner]}
        have = len(holders & responders)
        if have < cfg.t:
          raise RoundAborted(
            f"hospital {owner}'s {kind} has {have} of the {cfg.t} shares needed "
            f"({len(responders)} hospitals answered the unmasking); nothing was revealed"
          )
    request = {SELF: frozenset(senders), KEY: frozenset(dropped)}
    received: dict = {}
    for h in sorted(responders):
      for (kind, owner), share in self.respond(h, request).items():
        received.setdefault((kind, owner), {})[h + 1] = share
    seeds_, keys_ = {}, {}
    for (kind, owner), shares in received.items():
      value = self._reconstruct(shares, owner, kind)
      (seeds_ if kind == SELF else keys_)[owner] = value
    self_keys = [chacha.key_words(shamir.int_to_bytes(v, 32)) for v in seeds_.values()]
    pair_keys, pair_signs, lost = [], [], []
    for d, value in keys_.items():
      private = x25519.X25519PrivateKey.from_private_bytes(shamir.int_to_bytes(value, 32))
      for j in r.graph[d]:
        if j in senders:  # j added sign(j, d) * PRG(k_jd); remove it
          secret = private.exchange(r.public[j])
          pair_keys.append(pair_key(secret, r.round_num, d, j))
          pair_signs.append(1 if j < d else -1)
          lost.append((dither_key(secret, r.round_num, d, j), 1 if j < d else -1))
    total = self._masks(
      tf.constant(masked_sum, tf.int64),
      tf.constant(np.reshape(self_keys, [-1, 8]), tf.uint32),
      tf.constant(np.reshape(pair_keys, [-1, 8]), tf.uint32),
      tf.constant(np.array(pair_signs, np.int32)),
    )
    stats_ = {
      "secagg_revealed_seeds": len(seeds_),
      "secagg_revealed_keys": len(keys_),
      "lost_dithers": lost,
    }
    return total.numpy(), stats_

  def _reconstruct(self, shares: dict, owner: int, kind: str) -> int:
    try:
      # c colluders can corrupt at most c shares: c + 2 checked shares beyond
      # t include an honest one (when there are that many).
      return shamir.reconstruct(
        shares, threshold=self.cfg.t, bits=256, checks=self.cfg.colluders + 2
      )
    except shamir.InconsistentShares as e:
      who = f" (bad share from hospital {e.holders[0] - 1})" if e.holders else ""
      raise RoundAborted(
        f"hospital {owner}'s {kind} shares are inconsistent{who}: {e}; the round is abandoned"
      ) from e

  @staticmethod
  def _remove_masks(masked_sum, self_keys, pair_keys, pair_signs, prg):
    minus_ones = -tf.ones(tf.shape(self_keys)[:1], tf.int32)
    total = masking.add_streams(masked_sum, self_keys, minus_ones, masking.SELF_NONCE, prg)
    total = masking.add_streams(total, pair_keys, -pair_signs, masking.PAIR_NONCE, prg)
    return tf.math.floormod(total, masking.MODULUS)
