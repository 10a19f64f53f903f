"""The SecAgg protocol: masks cancel, dropouts at every phase, threshold abort."""

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff.program import loop
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import protocol

N = 2000


def _masked_sum(proto, codes, senders, prg="chacha20"):
  mask = tf.function(lambda c, pk, ps, sk: masking.mask(c, pk, ps, sk, prg))
  total = np.zeros(N, np.int64)
  for s in senders:
    pk, ps, sk = proto.client_inputs(s)
    total += mask(tf.constant(codes[s]), tf.constant(pk), tf.constant(ps), tf.constant(sk)).numpy()
  return total


def _codes(k, seed=0):
  rng = np.random.default_rng(seed)
  return {i: rng.integers(0, 2**27, N, dtype=np.int64) for i in range(k)}


@pytest.mark.parametrize(
  "mode,k,senders,responders",
  [
    ("secagg", 2, [0, 1], [0, 1]),
    ("secagg", 5, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),  # no dropout
    ("secagg", 5, [0, 2, 3, 4], [0, 2, 3, 4]),  # 1 dropped before sending
    ("secagg", 5, [0, 1, 2, 3, 4], [0, 2, 4]),  # 2 gone before unmasking
    ("secagg", 6, [1, 2, 3, 4, 5], [1, 2, 3, 5]),  # both kinds (t = 4)
    ("secagg_plus", 10, list(range(10)), list(range(10))),
    ("secagg_plus", 10, [0, 1, 2, 3, 5, 6, 7, 8, 9], [0, 1, 2, 3, 5, 6, 8, 9]),
  ],
)
def test_unmasked_sum_equals_the_plain_integer_sum_bit_for_bit(mode, k, senders, responders):
  proto = protocol.Protocol(protocol.SecAggConfig(mode, k))
  proto.start_round(7)
  codes = _codes(k)
  masked = _masked_sum(proto, codes, senders)
  total, stats = proto.unmask(masked, senders=senders, responders=responders)
  np.testing.assert_array_equal(total, sum(codes[s] for s in senders))
  lost = stats.pop("lost_dithers")
  assert len(lost) == sum(
    1 for d in range(k) if d not in senders for j in proto.dither_graph[d] if j in senders
  )
  assert stats == {"secagg_revealed_seeds": len(senders), "secagg_revealed_keys": k - len(senders)}


def test_below_threshold_the_round_aborts_and_t_minus_1_shares_fail():
  cfg = protocol.SecAggConfig("secagg", 5)
  assert cfg.t == 3
  proto = protocol.Protocol(cfg)
  proto.start_round(0)
  codes = _codes(5)
  masked = _masked_sum(proto, codes, range(5))
  with pytest.raises(protocol.RoundAborted, match="2 of the 3 shares"):
    proto.unmask(masked, senders=range(5), responders=[0, 1])
  # t responders suffice.
  total, _ = proto.unmask(masked, senders=range(5), responders=[0, 1, 2])
  np.testing.assert_array_equal(total, sum(codes.values()))


def test_masks_are_fresh_each_round_and_the_sum_is_not_the_codes_without_unmasking():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 3))
  codes = _codes(3)
  proto.start_round(0)
  first = _masked_sum(proto, codes, range(3))
  proto.start_round(1)
  second = _masked_sum(proto, codes, range(3))
  plain = sum(codes.values())
  assert not np.array_equal(np.mod(first, 2**32), plain)  # self masks remain
  assert np.mean(first == second) < 0.01


def test_secagg_plus_graph_is_symmetric_with_k_neighbours():
  cfg = protocol.SecAggConfig("secagg_plus", 100, server_model="semi_honest")
  graph = protocol.neighbour_graph(cfg, b"order")
  assert cfg.degree == 28 and cfg.t == 6  # derived (federated-compute's reference values)
  for i, near in graph.items():
    assert len(near) == 28 and i not in near
    assert all(i in graph[j] for j in near)
  # Against a malicious server: t > (holders + t1) / 2 = (75 + 5) / 2 needs 74 neighbours.
  cfg = protocol.SecAggConfig("secagg_plus", 100)
  assert (cfg.degree, cfg.t, cfg.corrupted_holders) == (74, 41, 5)
  assert all(len(near) == 74 for near in protocol.neighbour_graph(cfg, b"order").values())
  full = protocol.neighbour_graph(protocol.SecAggConfig("secagg", 6))
  assert all(len(v) == 5 for v in full.values())


def test_pair_keys_agree_between_the_two_hospitals():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 3))
  proto.start_round(4)
  keys = {}
  for i in range(3):
    pk, ps, _ = proto.client_inputs(i)
    for j, key, sign in zip(proto.graph[i], pk, ps):
      keys[(i, j)] = (tuple(key), int(sign))
  for (i, j), (key, sign) in keys.items():
    assert keys[(j, i)][0] == key and keys[(j, i)][1] == -sign


def test_insecure_philox_mode_also_cancels():
  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 3, prg="philox_insecure"))
  proto.start_round(0)
  codes = _codes(3)
  total, _ = proto.unmask(
    _masked_sum(proto, codes, [0, 2], prg="philox_insecure"), senders=[0, 2], responders=[0, 2]
  )
  np.testing.assert_array_equal(total, codes[0] + codes[2])


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(mode="bogus", num_hospitals=3), "secure_aggregation"),
    (dict(mode="secagg", num_hospitals=3, threshold=4), "secagg_threshold"),
    (dict(mode="secagg", num_hospitals=3, prg="md5"), "secagg_prg"),
    (dict(mode="secagg_plus", num_hospitals=3, neighbours=0), "secagg_neighbours"),
  ],
)
def test_bad_configuration(kwargs, message):
  with pytest.raises(ValueError, match=message):
    protocol.SecAggConfig(**kwargs)


def _train(digits, tmp_path, name, **overrides):
  from dopamine_tff import configs

  cfg = configs.TrainConfig(
    setting="fscdp",
    rounds=3,
    sampling_prob=0.1,
    noise_multiplier=1.0,
    l2_norm_clip=1.0,
    learning_rate=0.05,
    eval_every=3,
    dropout_schedule=((2, (1,)),),
    insecure_seeded_noise=True,  # the same noise in every mode: weights comparable
    **overrides,
  )
  out = str(tmp_path / name)
  opts = configs.LoopOptions(checkpoint_every=0, tensorboard=False)
  summary = loop.run(cfg, digits, out, options=opts, log=lambda _: None)
  return summary, np.load(f"{out}/final_weights.npz")


@pytest.mark.parametrize("runtime", ["in_process", "tff"])
def test_training_with_secagg_gives_the_plain_weights(digits, tmp_path, runtime, request):
  if runtime == "tff":
    request.getfixturevalue("tff_runtime")
  plain, w_plain = _train(digits, tmp_path, "none", runtime=runtime)
  secure, w_secure = _train(
    digits, tmp_path, "secagg", runtime=runtime, secure_aggregation="secagg"
  )
  # The same noise; the dithers come from the pairs' X25519 agreements under
  # SecAgg, so the roundings differ: the same sums up to the encoding's error
  # (a few 1e-7 per round).
  for key in w_plain.files:
    np.testing.assert_allclose(w_plain[key], w_secure[key], rtol=0, atol=1e-6)
  assert secure["epsilon"] == plain["epsilon"]
  assert secure["secure_aggregation"]["threshold"] == 3
  plus, w_plus = _train(
    digits, tmp_path, "secagg_plus", runtime=runtime, secure_aggregation="secagg_plus"
  )
  for key in w_plain.files:
    np.testing.assert_allclose(w_plain[key], w_plus[key], rtol=0, atol=1e-6)
  assert plus["epsilon"] == plain["epsilon"]


def test_an_aborted_round_releases_nothing_and_spends_nothing(digits, tmp_path):
  # Every hospital misses the unmasking: every round aborts.
  summary, weights = _train(
    digits,
    tmp_path,
    "abort",
    runtime="in_process",
    secure_aggregation="secagg",
    secagg_unmask_dropout_prob=0.999,
  )
  from dopamine_tff import models

  w0 = models.initial_weights("small_cnn", digits.image_shape, digits.num_classes, 0)
  for got, ref in zip(weights.values(), w0):
    np.testing.assert_array_equal(got, ref)
  assert summary["epsilon"] == 0.0
  # Issue 22: aborted rounds are counted apart and warned about.
  assert (summary["rounds_run"], summary["rounds_released"], summary["rounds_skipped"]) == (3, 0, 3)
  assert "3 of 3 rounds released nothing" in summary["warning"]
  import csv

  with open(tmp_path / "abort" / "metrics.csv") as f:
    assert [r["skipped"] for r in csv.DictReader(f)] == ["1", "1", "1"]


@pytest.mark.parametrize("mode", ["none", "secagg"])
def test_an_update_that_cannot_be_encoded_abandons_the_round(digits, tmp_path, mode):
  """Issue 18: the count of unencodable coordinates was released every round;
  now only a flag leaves the hospitals and such a round releases nothing."""
  from dopamine_tff import models

  # A range of 1e-300: every coordinate is beyond 2**52 steps, so unencodable.
  summary, weights = _train(
    digits,
    tmp_path,
    f"flag_{mode}",
    runtime="in_process",
    secure_aggregation=mode,
    secure_sum_bound=1e-300,
  )
  w0 = models.initial_weights("small_cnn", digits.image_shape, digits.num_classes, 0)
  for got, ref in zip(weights.values(), w0):
    np.testing.assert_array_equal(got, ref)
  assert summary["epsilon"] == 0.0
  import csv

  with open(tmp_path / f"flag_{mode}" / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["skipped"] for r in rows] == ["1"] * 3
  assert [r["secure_clipped"] for r in rows] == ["1"] * 3
