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

Parameters: :class:`SecAggConfig` (dopamine_tff/secagg/config.py).

Simulation boundary: one process plays every party, so this object holds all
secrets; the protocol's messages, costs, refusals and failure behaviour are
real, the isolation between parties is not. Where the keys come from is set
by a ``seeds.Randomness``: the OS CSPRNG by default.
"""

from __future__ import annotations

import dataclasses
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import numpy as np

from dopamine_tff import graphs
from dopamine_tff import seeds
from dopamine_tff.secagg import chacha
from dopamine_tff.secagg import config as config_lib
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import parameters
from dopamine_tff.secagg import shamir

_INFO = b"dopamine_tff/secagg/v1/pair-mask"
_DITHER_INFO = b"dopamine_tff/secagg/v1/pair-dither"


# Re-exported from secagg/config.py, parameters.py and graphs.py.
RoundAborted = config_lib.RoundAborted
UpdateNotEncodable = config_lib.UpdateNotEncodable
ProtocolViolation = config_lib.ProtocolViolation
SecAggConfig = config_lib.SecAggConfig
Guarantee = parameters.Guarantee
guarantee = parameters.guarantee
harary_parameters = parameters.harary_parameters
harary_graph = graphs.harary_graph
neighbour_graph = graphs.neighbour_graph
check_hidden = graphs.check_hidden
MODES = config_lib.MODES


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
  """The pair's 256-bit dither key from the same agreement (own HKDF info): uint32[8]."""
  return chacha.key_words(_derive(secret, _DITHER_INFO, round_num, i, j, 32))


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
  delivered: set  # hospitals that sent their masked input (each knows its own)
  dither_graph: dict = dataclasses.field(default_factory=dict)  # a sub-graph of `graph`

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

  def __repr__(self):
    return f"Protocol({self.cfg.mode}, K={self.cfg.num_hospitals}, t={self.cfg.t})"

  @property
  def graph(self) -> dict:
    """This round's neighbour graph."""
    if self._round is None:
      raise RuntimeError("no round started")
    return self._round.graph

  @property
  def dither_graph(self) -> dict:
    """This round's pair-dither graph (a sub-graph of `graph`)."""
    if self._round is None:
      raise RuntimeError("no round started")
    return self._round.dither_graph

  def _holders(self, i: int, graph) -> dict:
    return {"threshold": self.cfg.t, "holders": [h + 1 for h in (i, *graph[i])]}

  def start_round(self, round_num: int) -> None:
    """Phase 1 of a fresh instance: graph, key pairs, self-mask keys and shares."""
    cfg, rnd, k = self.cfg, self.randomness, self.cfg.num_hospitals
    order_seed = rnd.secret_bytes(round_num, seeds.Purpose.SECAGG_GRAPH, -1)
    graph = neighbour_graph(cfg, order_seed)
    # The pair dithers need only a connected graph: about log2 K partners of
    # the K - 1 (or SecAgg+'s k) mask partners, over the same order.
    degree = min(graphs.dither_degree(k, cfg.colluders), cfg.degree)
    dither_graph = graphs.dither_graph(k, degree, order_seed)
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
      round_num, graph, private, public, self_keys, key_shares, self_shares, set(), dither_graph
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
    """Hospital `hospital`'s pair-dither keys (uint32 [M, 8]) and signs, from its agreements."""
    r = self._round
    near = r.dither_graph[hospital]
    keys = [
      dither_key(r.private[hospital].exchange(r.public[j]), r.round_num, hospital, j) for j in near
    ]
    signs = np.array([1 if hospital < j else -1 for j in near], np.int32)
    return np.array(keys, np.uint32).reshape(-1, 8), signs

  def deliver(self, hospitals) -> None:
    """Records that `hospitals` sent their masked inputs this round (each knows it)."""
    self._round.delivered.update(int(h) for h in hospitals)

  def respond(self, holder: int, request: dict) -> dict:
    """An honest holder's answer to the server's unmasking request.

    Args:
      holder: the responding hospital.
      request: {SELF: owners whose self-mask share is asked, KEY: owners whose
        private-key share is asked}, for the current round.

    Returns:
      {(kind, owner): share} for the owners whose secret the holder holds.

    Raises:
      ProtocolViolation: the request asks for both secrets of one owner, for
        the other secret of an owner whose first this holder revealed, or for
        the holder's own private key in a round it delivered.
    """
    r = self._round
    record = self.revealed.setdefault(holder, {})
    asked = [(SELF, o) for o in request.get(SELF, ())] + [(KEY, o) for o in request.get(KEY, ())]
    if holder in r.delivered and holder in request.get(KEY, ()):
      raise ProtocolViolation(
        f"hospital {holder} refuses: round {r.round_num + 1} asks for its own private key, "
        "but it delivered its masked input"
      )
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
    cfg = self.cfg
    senders, responders = set(senders), set(responders) & set(senders)
    dropped = set(range(cfg.num_hospitals)) - senders
    self.deliver(senders)  # the simulation's truth: each sender knows it sent
    self._check_recoverable(senders, responders, dropped)  # before anything is revealed
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
    pair_keys, pair_signs, lost = self._dropped_pairs(keys_, senders)
    total = masking.host_unmask(masked_sum, self_keys, pair_keys, pair_signs, cfg.prg)
    stats_ = {
      "secagg_revealed_seeds": len(seeds_),
      "secagg_revealed_keys": len(keys_),
      "lost_dithers": lost,
    }
    return total, stats_

  def _check_recoverable(self, senders, responders, dropped) -> None:
    """RoundAborted unless the updates stay hidden and every needed secret has t shares."""
    r, cfg = self._round, self.cfg
    check_hidden(r.graph, senders, cfg.corrupted_holders)
    check_hidden(r.dither_graph, senders, cfg.colluders)
    for kind, owners in ((SELF, senders), (KEY, dropped)):
      for owner in sorted(owners):
        holders = {h - 1 for h in (r.self_shares if kind == SELF else r.key_shares)[owner]}
        have = len(holders & responders)
        if have < cfg.t:
          raise RoundAborted(
            f"hospital {owner}'s {kind} has {have} of the {cfg.t} shares needed "
            f"({len(responders)} hospitals answered the unmasking); nothing was revealed"
          )

  def _dropped_pairs(self, keys_: dict, senders) -> tuple[list, list, list]:
    """The pair masks senders share with dropped hospitals (whose keys were revealed),
    and the pair dithers left in the sum: (mask keys, signs, [(dither key, sign)])."""
    r = self._round
    pair_keys, pair_signs, lost = [], [], []
    for d, value in keys_.items():
      private = x25519.X25519PrivateKey.from_private_bytes(shamir.int_to_bytes(value, 32))
      for j in r.graph[d]:
        if j in senders:  # j added sign(j, d) * PRG(k_jd); remove it
          secret = private.exchange(r.public[j])
          pair_keys.append(pair_key(secret, r.round_num, d, j))
          pair_signs.append(1 if j < d else -1)
          if j in r.dither_graph[d]:
            lost.append((dither_key(secret, r.round_num, d, j), 1 if j < d else -1))
    return pair_keys, pair_signs, lost

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
