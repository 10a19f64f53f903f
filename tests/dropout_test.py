"""Hospital dropouts and noise provisioning: honest accounting."""

import math
import os
import shutil
import tempfile

import numpy as np
import pytest

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import trainers
from dopamine_tff.program import checkpoint
from dopamine_tff.program import loop
from experiments import flags_lib
from tests import helpers


def _cfg(**kw):
  # The TFF runtime; runs are compared with each other (seeded).
  return helpers.tiny_cfg(**{"runtime": "tff", "seed": 3, "insecure_seeded_noise": True, **kw})


def _run(cfg, data):
  out = tempfile.mkdtemp()
  summary = loop.run(
    cfg, data, out, options=configs.LoopOptions(checkpoint_every=1), log=lambda _: None
  )
  with open(f"{out}/metrics.csv") as f:
    rows = f.read().splitlines()
  return summary, out, rows


def test_round_event_is_the_noise_actually_added(data, tff_runtime):
  """The round's DP event equals the std of the noise the round really adds."""
  q, n = 1e-9, data.num_train  # an empty batch: the update is the noise alone
  cfg = _cfg(
    dropout_schedule=((2, (1, 3)),),
    sampling_prob=q,
    learning_rate=q * n,
    momentum=0.0,
    secure_sum_bound=100.0,
    # The plain sum: SecAgg (the default) needs t = 3 of these 4 hospitals and
    # aborts the round with 2 (secagg_protocol_test).
    secure_aggregation="none",
  )
  trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
  full, dropped = trainer.plan(0), trainer.plan(1)
  assert full.clients == (0, 1, 2, 3) and full.steps["all"].noise_multiplier == 1.0
  assert dropped.clients == (0, 2) and dropped.dropped == (1, 3)
  assert dropped.steps["all"].noise_multiplier == pytest.approx(math.sqrt(2 / 4))
  for r, plan in ((0, full), (1, dropped)):
    state0 = trainer.initial_state()
    state = trainer.run(state0, plan, r).state
    noise = np.concatenate(
      [(a - b).ravel() for a, b in zip(trainer.weights(state0), trainer.weights(state))]
    )
    # C = 1: the sum's noise std is the event's noise multiplier; the server
    # divides by the survivors' expected batch q * N', and lr = q * N.
    scale = n / sum(trainer.sizes[c] for c in plan.clients)
    assert noise.std() == pytest.approx(plan.steps["all"].noise_multiplier * scale, rel=0.03)


def test_epsilon_with_dropouts_is_at_least_without(data, tff_runtime):
  plain, _, _ = _run(_cfg(rounds=6), data)
  drops, _, rows = _run(_cfg(rounds=6, dropout_prob=0.4), data)
  assert any(r.split(",")[6] != "4" for r in rows[1:]), "no hospital dropped; pick another seed"
  assert drops["epsilon"] > plain["epsilon"]
  steps = [accounting.StepSpec(**s) for s in drops["ledgers"]["all"]["steps"]]
  assert len({s.noise_multiplier for s in steps}) > 1  # heterogeneous rounds composed
  assert drops["epsilon"] == pytest.approx(accounting.epsilon_of(steps, 1e-4), rel=1e-9)


def test_round_below_m_is_skipped_and_changes_nothing(data, tff_runtime):
  cfg = _cfg(rounds=3, min_surviving_hospitals=3, dropout_schedule=((2, (0, 1)),))
  summary, _, rows = _run(cfg, data)
  r1, r2, r3 = (dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:])
  assert (r1["skipped"], r2["skipped"], r3["skipped"]) == ("0", "1", "0")
  assert r2["epsilon"] == r1["epsilon"] and r3["epsilon"] > r2["epsilon"]
  assert len(summary["ledgers"]["all"]["steps"]) == 2


def test_skipped_round_keeps_weights(data, tff_runtime):
  cfg = _cfg(rounds=2, min_surviving_hospitals=3, dropout_schedule=((2, (0, 1)),))
  _, out, _ = _run(cfg, data)
  ck = os.path.join(out, "checkpoints")
  assert checkpoint.rounds(ck) == [1, 2]
  after_1 = checkpoint.load_latest(ck)  # round 2
  shutil.rmtree(os.path.join(ck, "ckpt_00000002"))
  after_0 = checkpoint.load_latest(ck)  # round 1
  for a, b in zip(after_0.arrays["weights"], after_1.arrays["weights"]):
    np.testing.assert_array_equal(a, b)
  assert after_0.meta["ledgers"] == after_1.meta["ledgers"]


def test_provisioned_noise_std_is_sigma_c_sqrt_k_over_m(data, tff_runtime):
  """M=2 of K=4, nobody drops: the sum carries sigma*C*sqrt(K/M)."""
  sigma, clip, q = 1.0, 1.0, 1e-9
  n = data.num_train
  cfg = _cfg(
    rounds=1,
    sampling_prob=q,
    learning_rate=q * n,
    momentum=0.0,
    min_surviving_hospitals=2,
    secure_sum_bound=100.0,
  )
  trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
  state0 = trainer.initial_state()
  state = trainer.run(state0, trainer.plan(0), 0).state
  noise = np.concatenate(
    [(a - b).ravel() for a, b in zip(trainer.weights(state0), trainer.weights(state))]
  )
  assert noise.std() == pytest.approx(sigma * clip * math.sqrt(4 / 2), rel=0.03)
  assert trainer.plan(0).steps["all"].noise_multiplier == pytest.approx(math.sqrt(2))


def test_m_larger_than_k_is_refused(data, tff_runtime):
  with pytest.raises(ValueError, match="min_surviving_hospitals=5 exceeds"):
    trainers.make_trainer(_cfg(min_surviving_hospitals=5), data, tempfile.mkdtemp())


def test_schedule_flag_parses_and_rejects():
  assert flags_lib.parse_schedule("3:0,2; 5:1") == ((3, (0, 2)), (5, (1,)))
  with pytest.raises(ValueError, match="cannot parse 'x'"):
    flags_lib.parse_schedule("x")
  with pytest.raises(ValueError, match="dropout_prob"):
    configs.TrainConfig(dropout_prob=1.0)
