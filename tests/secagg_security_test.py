"""Attacks on the secure aggregation, each stopped (issue 18: seen to succeed on the old code).

* key reuse: a private key revealed for a dropout unmasked the hospital's
  later rounds (one key pair per run); now every round has fresh keys;
* the "never both" guard: it compared disjoint sets and could not fire; now
  each holder refuses the second secret of a (round, hospital);
* aborts: shares were revealed before the threshold was known to be met;
* bad shares: an OverflowError or a silent shift; now an attributed abort;
* collusion: c >= t colluders, t = 1, and SecAgg+ degrees without the 2^-40
  bound are refused; a victim whose honest neighbours all dropped is not
  unmasked.
"""

from cryptography.hazmat.primitives.asymmetric import x25519
import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import seeds
from dopamine_tff.secagg import chacha
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import protocol
from dopamine_tff.secagg import shamir

SEMI = "semi_honest"
N = 512
_mask = tf.function(lambda c, pk, ps, sk: masking.mask(c, pk, ps, sk))


class Server:
  """Records everything a server receives, and tries to unmask one hospital."""

  def __init__(self, proto):
    self.proto = proto
    self.rounds = []  # per round: public keys, masked vectors, received shares
    original = proto.respond

    def recording(holder, request):
      out = original(holder, request)
      for (kind, owner), share in out.items():
        self.rounds[-1]["shares"].setdefault((kind, owner), {})[holder + 1] = share
      return out

    proto.respond = recording

  def run_round(self, r, codes, senders, responders):
    p = self.proto
    p.start_round(r)
    view = {"public": p.public_keys(), "graph": p.graph, "masked": {}, "shares": {}}
    self.rounds.append(view)
    total = np.zeros(N, np.int64)
    for s in senders:
      pk, ps, sk = p.client_inputs(s)
      y = _mask(tf.constant(codes[s]), tf.constant(pk), tf.constant(ps), tf.constant(sk)).numpy()
      view["masked"][s] = y
      total += y
    out, _ = p.unmask(total, senders=senders, responders=responders)
    return out

  def recovered_keys(self, kind):
    """(round, owner) -> secret, for every secret this server could reconstruct."""
    out = {}
    for r, view in enumerate(self.rounds):
      for (k, owner), shares in view["shares"].items():
        if k == kind and len(shares) >= self.proto.cfg.t:
          out[r, owner] = shamir.reconstruct(shares, threshold=self.proto.cfg.t)
    return out

  def try_unmask(self, victim, r, private_value):
    """Hospital `victim`'s round-r codes from its masked vector, its revealed
    self-mask key of round r and a private key value (from any round)."""
    view = self.rounds[r]
    b = self.recovered_keys(protocol.SELF)[r, victim]
    sk = x25519.X25519PrivateKey.from_private_bytes(shamir.int_to_bytes(private_value, 32))
    y = view["masked"][victim].copy()
    y -= masking.prg_int64(
      chacha.key_words(shamir.int_to_bytes(b, 32)), masking.SELF_NONCE, N, "chacha20"
    ).numpy()
    for j in view["graph"][victim]:
      pub = x25519.X25519PublicKey.from_public_bytes(view["public"][j])
      key = protocol.pair_key(sk.exchange(pub), r, victim, j)
      sign = 1 if victim < j else -1
      y -= sign * masking.prg_int64(key, masking.PAIR_NONCE, N, "chacha20").numpy()
    return np.mod(y, 2**32)


def _codes(k, r):
  rng = np.random.default_rng(100 + r)
  return {i: rng.integers(0, 2**20, N, dtype=np.int64) for i in range(k)}


def test_a_dropout_does_not_unmask_the_hospitals_later_rounds():
  """K=4, hospital 1 drops in round 1 and returns in rounds 2-3 (the review's attack)."""
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 4))
  server = Server(proto)
  everyone = [0, 1, 2, 3]
  codes = {r: _codes(4, r) for r in range(3)}
  server.run_round(0, codes[0], [0, 2, 3], [0, 2, 3])  # hospital 1 dropped
  for r in (1, 2):
    total = server.run_round(r, codes[r], everyone, everyone)
    np.testing.assert_array_equal(total, sum(codes[r].values()))  # still correct
  keys = server.recovered_keys(protocol.KEY)
  assert set(keys) == {(0, 1)}  # the server did learn round 0's private key of hospital 1
  # With that key, round 0's pair masks would come off; rounds 1 and 2 used new keys.
  for r in (1, 2):
    guess = server.try_unmask(1, r, keys[0, 1])
    assert np.mean(guess == codes[r][1]) < 0.01  # uniform garbage, not the codes
    assert guess.max() > 2**30  # the codes are below 2**20
  # No revealed key unmasks any hospital's update in any round it delivered.
  for r in (1, 2):
    for victim in everyone:
      for key in keys.values():
        assert np.mean(server.try_unmask(victim, r, key) == codes[r][victim]) < 0.01
  # Sanity of the attack itself: with the right round's key it would work.
  right = shamir.bytes_to_int(protocol._raw(proto._round.private[1]))  # noqa: SLF001
  np.testing.assert_array_equal(server.try_unmask(1, 2, right), codes[2][1])


def test_keys_shares_and_graph_are_fresh_every_round():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg_plus", 100))
  proto.start_round(0)
  first = (proto.public_keys(), proto.graph, proto.client_inputs(5)[2])
  proto.start_round(1)
  second = (proto.public_keys(), proto.graph, proto.client_inputs(5)[2])
  assert all(first[0][i] != second[0][i] for i in range(100))
  assert first[1] != second[1]  # a new Harary order
  assert not np.array_equal(first[2], second[2])


def test_the_never_both_guard_fires_on_a_malicious_request():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 5))
  proto.start_round(3)
  # Asking for both secrets of hospital 2 at once.
  with pytest.raises(protocol.ProtocolViolation, match="both"):
    proto.respond(0, {protocol.SELF: {2}, protocol.KEY: {2}})
  # Or one after the other (claiming hospital 2 delivered, then that it dropped).
  proto.respond(0, {protocol.SELF: {2}, protocol.KEY: set()})
  with pytest.raises(protocol.ProtocolViolation, match="hospital 2"):
    proto.respond(0, {protocol.SELF: set(), protocol.KEY: {2}})
  # The next round's instance is new: its private key may be revealed. The
  # finished round's secrets are gone, so its record is closed (memory stays
  # one round's worth); the run-long counts remain.
  proto.start_round(4)
  assert proto.respond(0, {protocol.SELF: set(), protocol.KEY: {2}})
  assert all(key[0] == 4 for rec in proto.revealed.values() for key in rec)
  assert proto.revealed_counts == {protocol.SELF: 1, protocol.KEY: 1}


def test_an_abort_reveals_no_share():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 5))  # t = 3
  server = Server(proto)
  with pytest.raises(protocol.RoundAborted, match="nothing was revealed"):
    server.run_round(0, _codes(5, 0), [0, 1, 2, 3, 4], [0, 1])  # 2 responders < t
  assert server.rounds[0]["shares"] == {}
  assert proto.revealed == {}


def test_a_bad_share_aborts_the_round_and_names_its_holder():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 6))  # t = 4
  original = proto.respond

  def lying(holder, request):
    out = original(holder, request)
    if holder == 4:
      out = {key: (v + 1) % shamir.PRIME for key, v in out.items()}
    return out

  proto.respond = lying
  server_codes = _codes(6, 0)
  proto.start_round(0)
  total = np.zeros(N, np.int64)
  for s in range(6):
    pk, ps, sk = proto.client_inputs(s)
    total += _mask(
      tf.constant(server_codes[s]), tf.constant(pk), tf.constant(ps), tf.constant(sk)
    ).numpy()
  with pytest.raises(protocol.RoundAborted, match="bad share from hospital 4"):
    proto.unmask(total, senders=range(6), responders=range(6))


def test_shamir_checks_extra_shares_and_range():
  shares = shamir.split(12345, threshold=3, holders=[1, 2, 3, 4, 5])
  assert shares.threshold == 3 and "12345" not in repr(shares)
  assert shamir.reconstruct(shares) == 12345
  bad = shamir.Shares(dict(shares), 3)
  bad[5] = (bad[5] + 7) % shamir.PRIME
  with pytest.raises(shamir.InconsistentShares) as e:
    shamir.reconstruct(bad)
  assert e.value.holders == (5,)
  junk = shamir.Shares({1: shares[1], 2: 2**600, 3: shares[3]}, 3)
  with pytest.raises(shamir.InconsistentShares, match="not field elements"):
    shamir.reconstruct(junk)
  # Exactly t shares, one randomly corrupted: out of the 256-bit range but with
  # probability 2^-265 (a targeted small shift cannot be seen with t shares).
  forged = shamir.Shares({1: shares[1], 2: (shares[2] + 2**300) % shamir.PRIME, 3: shares[3]}, 3)
  with pytest.raises(shamir.InconsistentShares, match="exceeds 256 bits"):
    shamir.reconstruct(forged, bits=256)
  with pytest.raises(ValueError, match="does not match"):
    shamir.reconstruct(shares, threshold=2)


def test_secrets_stay_out_of_reprs():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 3))
  proto.start_round(0)
  r = proto._round  # noqa: SLF001
  text = repr(r) + str(r) + repr(proto) + repr(r.self_shares[0])
  for key in r.self_keys.values():
    assert key.hex() not in text and str(shamir.bytes_to_int(key)) not in text
  assert "secrets hidden" in repr(r)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (
      dict(mode="secagg", num_hospitals=10, colluders=6, server_model=SEMI),
      "below the Shamir threshold t=6",
    ),
    (dict(mode="secagg", num_hospitals=10, threshold=1), "must be in \\[2, 10\\]"),
    # One hospital's sum is its own update: refused, not "threshold 1 of 1".
    (dict(mode="secagg", num_hospitals=1), "needs K >= 2 hospitals, got 1"),
    (
      dict(mode="secagg_plus", num_hospitals=100, colluders=6, server_model=SEMI),
      "below the Shamir",
    ),
    (dict(mode="secagg_plus", num_hospitals=100, threshold=4, colluders=5), "threshold t=4"),
    (
      dict(
        mode="secagg_plus", num_hospitals=100, threshold=5, adversarial_fraction=0.03, colluders=4
      ),
      "at most 3 corrupted",
    ),
    (dict(mode="secagg_plus", num_hospitals=100, neighbours=8, server_model=SEMI), "2\\^-40"),
    (dict(mode="secagg_plus", num_hospitals=100, neighbours=7), "nearest valid: \\[6, 8\\]"),
    (
      dict(mode="secagg_plus", num_hospitals=100, adversarial_fraction=0.5, dropout_rate=0.5),
      "0.9",
    ),
  ],
)
def test_claims_the_parameters_cannot_cover_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    protocol.SecAggConfig(**kwargs)


def test_train_config_refuses_a_threshold_of_one():
  from dopamine_tff import configs

  with pytest.raises(ValueError, match="secagg_threshold"):
    configs.TrainConfig(secure_aggregation="secagg", secagg_threshold=1)


@pytest.mark.parametrize(
  "k,gamma,delta,expected",
  [(100, 0.05, 0.33, (28, 6)), (1000, 0.05, 0.33, (72, 24))],  # federated-compute's test values
)
def test_harary_parameters_match_the_reference_finder(k, gamma, delta, expected):
  assert protocol.harary_parameters(k, gamma, delta) == expected
  g = protocol.guarantee(k, *expected, gamma, delta)
  assert g.security_log2 <= -40 and g.correctness_log2 <= -20
  # One degree less is not enough (the search returns the smallest).
  assert protocol.harary_parameters(k, gamma, delta)[0] - 2 < expected[0]
  smaller = protocol.guarantee(k, expected[0] - 2, expected[1], gamma, delta)
  assert smaller.security_log2 > -40 or smaller.correctness_log2 > -20


def test_the_old_log2_degree_was_far_from_the_bound():
  """The review: degree ~log2 K with a majority threshold gave 2^-20 to 2^+6."""
  g = protocol.guarantee(100, 8, 5, 0.05, 0.33)
  assert g.security_log2 > -40


def test_a_victim_whose_honest_neighbours_dropped_is_not_unmasked():
  """K=40 SecAgg+ with t-1 colluding neighbours and the victim's other neighbours
  dropped: the old code unmasked it in a normal round; now the round aborts."""
  cfg = protocol.SecAggConfig(
    "secagg_plus", 40, adversarial_fraction=0.05, colluders=2, server_model=SEMI
  )
  proto = protocol.Protocol(cfg)
  proto.start_round(0)
  victim = 0
  near = list(proto.graph[victim])
  colluders = near[: cfg.t - 1]
  senders = [h for h in range(40) if h == victim or h not in near or h in colluders]
  with pytest.raises(protocol.RoundAborted, match="hospital 0 has 2 delivering neighbours"):
    proto.unmask(np.zeros(N, np.int64), senders=senders, responders=senders)
  assert proto.revealed == {}


def test_removing_any_c_hospitals_must_keep_the_graph_connected():
  # A path 0-1-2-3: connected, but removing hospital 1 cuts 0 off.
  path = {0: (1,), 1: (0, 2), 2: (1, 3), 3: (2,)}
  protocol.check_hidden(path, {0, 1, 2, 3}, colluders=0)
  with pytest.raises(protocol.RoundAborted):
    protocol.check_hidden({0: (1, 3), 1: (0, 2), 2: (1, 3), 3: (2, 0)}, {0, 1, 2, 3}, 2)
  ring = {i: ((i - 1) % 6, (i + 1) % 6) for i in range(6)}
  protocol.check_hidden(ring, set(range(6)), colluders=1)
  bowtie = {0: (1, 2, 3, 4), 1: (0, 2), 2: (0, 1), 3: (0, 4), 4: (0, 3)}
  protocol.check_hidden(bowtie, set(range(5)), colluders=0)
  with pytest.raises(protocol.RoundAborted, match="disconnects"):
    protocol.check_hidden(bowtie, set(range(5)), colluders=1)


def test_seeded_randomness_replays_and_secret_does_not():
  a = protocol.Protocol(protocol.SecAggConfig("secagg", 3), seeds.Randomness(7, seeded=True))
  b = protocol.Protocol(protocol.SecAggConfig("secagg", 3), seeds.Randomness(7, seeded=True))
  c = protocol.Protocol(protocol.SecAggConfig("secagg", 3), seeds.Randomness(7))
  d = protocol.Protocol(protocol.SecAggConfig("secagg", 3), seeds.Randomness(7))
  for p in (a, b, c, d):
    p.start_round(2)
  assert a.public_keys() == b.public_keys()
  assert c.public_keys() != d.public_keys()
  np.testing.assert_array_equal(a.dither_inputs(0)[0], b.dither_inputs(0)[0])
  assert not np.array_equal(c.dither_inputs(0)[0], d.dither_inputs(0)[0])


def _split_attack(cfg, colluders=(), victim=0):
  """The server of the second review: it tells some of the victim's holders that
  the victim delivered (asking its self-mask share) and the others that it
  dropped (asking its private-key share), one holder at a time; colluding
  holders hand over both. Returns (self-mask shares, key shares, refusals)."""
  proto = protocol.Protocol(cfg)
  proto.start_round(0)
  proto.deliver(range(cfg.num_hospitals))  # everyone delivered
  r = proto._round
  holders = [*proto.graph[victim], victim]  # the victim is asked last, for its own key
  corrupt = [h for h in holders if h in colluders]
  honest = [h for h in holders if h not in colluders]
  got = {protocol.SELF: {}, protocol.KEY: {}}
  for h in corrupt:
    got[protocol.SELF][h + 1] = r.self_shares[victim][h + 1]
    got[protocol.KEY][h + 1] = r.key_shares[victim][h + 1]
  refusals = 0
  need_self = max(0, cfg.t - len(corrupt))
  plan = [(h, protocol.SELF) for h in honest[:need_self]] + [
    (h, protocol.KEY) for h in honest[need_self:]
  ]
  plan += [(h, protocol.KEY) for h in honest[:need_self]]  # short of key shares: ask again
  for h, kind in plan:
    other = protocol.KEY if kind == protocol.SELF else protocol.SELF
    try:
      answer = proto.respond(h, {kind: {victim}, other: set()})
    except protocol.ProtocolViolation:
      refusals += 1
      continue
    for (_, _owner), share in answer.items():
      got[kind][h + 1] = share
  return got[protocol.SELF], got[protocol.KEY], refusals


@pytest.mark.parametrize(
  "mode,k,colluders",
  [
    ("secagg_plus", 40, ()),  # the review: t=3 of 17 holders, both secrets recovered
    ("secagg_plus", 100, ()),  # t=6 of 29
    ("secagg", 10, (1, 2)),  # 2 colluders (c < t was all the old check asked)
    ("secagg", 20, (1, 2)),
  ],
)
def test_split_requests_across_holders_never_yield_both_secrets(mode, k, colluders):
  cfg = protocol.SecAggConfig(mode, k, colluders=len(colluders))
  self_shares, key_shares, refusals = _split_attack(cfg, colluders)
  # Never t shares of both: the victim's update stays masked.
  assert len(self_shares) < cfg.t or len(key_shares) < cfg.t
  assert refusals > 0  # an honest holder (or the victim itself) refused the second secret
  # The semi-honest parameters leave the split room: two sets of t holders
  # need not share an honest one. Under SecAgg+ the attack then recovers both
  # (the victim's refusal of its own key alone stops it at these SecAgg sizes).
  weak = protocol.SecAggConfig(mode, k, colluders=len(colluders), server_model=SEMI)
  assert 2 * weak.t <= weak.holders_per_secret + weak.corrupted_holders
  if mode == "secagg_plus":
    self_shares, key_shares, _ = _split_attack(weak, colluders)
    assert len(self_shares) >= weak.t and len(key_shares) >= weak.t


def test_a_hospital_never_releases_its_own_key_in_a_round_it_delivered():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 5))
  proto.start_round(0)
  proto.deliver([0, 1, 2, 3, 4])
  with pytest.raises(protocol.ProtocolViolation, match="its own private key"):
    proto.respond(2, {protocol.SELF: set(), protocol.KEY: {2}})
  assert proto.respond(3, {protocol.SELF: set(), protocol.KEY: {2}})  # another holder may


def test_the_malicious_thresholds_hold_at_k_1000():
  cfg = protocol.SecAggConfig("secagg_plus", 1000)
  assert 2 * cfg.t > cfg.holders_per_secret + cfg.corrupted_holders
  assert cfg.guarantee.security_log2 <= -40 and cfg.guarantee.correctness_log2 <= -20
  weak = protocol.SecAggConfig("secagg_plus", 1000, server_model=SEMI)
  assert (weak.degree, weak.t) == (72, 24)  # 24 + 24 < 73 holders: the split attack's room


@pytest.mark.parametrize("model", ["malicious", SEMI])
def test_the_hiding_check_counts_the_corrupted_neighbours_the_threat_model_names(model):
  """The review: K=40, c=0, 2 corrupt neighbours of a hospital and its other
  neighbours dropped. The old check used c=0, completed the round and revealed
  the dropped neighbours' keys: the victim's masks were all known."""
  cfg = protocol.SecAggConfig("secagg_plus", 40, server_model=model)
  assert cfg.colluders == 0 and cfg.corrupted_holders == 2  # t1 at K=40, gamma 0.05
  proto = protocol.Protocol(cfg)
  proto.start_round(0)
  near = list(proto.graph[0])
  senders = [h for h in range(40) if h not in near[2:]]  # 2 corrupt neighbours deliver
  with pytest.raises(protocol.RoundAborted, match="hospital 0 has 2 delivering neighbours"):
    proto.unmask(np.zeros(N, np.int64), senders=senders, responders=senders)
  assert proto.revealed_counts == {protocol.SELF: 0, protocol.KEY: 0}


@pytest.mark.parametrize("model", ["malicious", SEMI])
@pytest.mark.parametrize("k", [5, 6, 10, 16, 17, 18, 33, 40])
def test_secagg_plus_never_aborts_more_often_than_it_states(k, model):
  """The review: t = max(t1 + 1, 2) exceeded t2 at small K (2^-1.58 at K=10)."""
  cfg = protocol.SecAggConfig("secagg_plus", k, server_model=model)
  assert cfg.guarantee.correctness_log2 <= -20
  assert cfg.guarantee.security_log2 <= -40
  assert (cfg.note is not None) == cfg.complete  # the complete graph says why


def test_an_explicit_secagg_plus_choice_that_aborts_too_often_is_refused():
  with pytest.raises(ValueError, match="a round aborts with probability"):
    protocol.SecAggConfig("secagg_plus", 10, neighbours=4, threshold=3, server_model=SEMI)
