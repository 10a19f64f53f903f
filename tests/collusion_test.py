"""A server colluding with c hospitals: the noise it cannot subtract, accounted."""

import math
import tempfile

import pytest

from dopamine_tff import configs
from dopamine_tff import trainers
from dopamine_tff.program import loop
from tests import helpers


def _cfg(**kw):
  # The plain sum: these tests are about the accounting, which holds for any
  # c; SecAgg refuses c >= t (secagg_security_test).
  return helpers.tiny_cfg(
    **{"noise_multiplier": 1.2, "eval_every": 4, "secure_aggregation": "none", **kw}
  )


def _trainer(data, **kw):
  return trainers.make_trainer(_cfg(**kw), data, tempfile.mkdtemp())


def test_colluders_leave_sigma_sqrt_k_minus_c_over_k(data):
  plan = _trainer(data, assumed_colluders=1).plan(0)
  assert plan.steps["all"].noise_multiplier == pytest.approx(1.2)
  assert plan.steps["colluders"].noise_multiplier == pytest.approx(1.2 * math.sqrt(3 / 4))
  # With a dropout the honest unknown shares are K' - c = 2 of 4.
  plan = _trainer(data, assumed_colluders=1, dropout_schedule=((1, (2,)),)).plan(0)
  assert plan.steps["colluders"].noise_multiplier == pytest.approx(1.2 * math.sqrt(2 / 4))
  # All delivering hospitals collude: no noise is unknown, epsilon is infinite.
  plan = _trainer(data, assumed_colluders=4).plan(0)
  assert plan.steps["colluders"].noise_multiplier == 0.0


def test_provisioning_pays_for_the_colluders(data):
  trainer = _trainer(data, assumed_colluders=1, provision_for_colluders=True)
  plan = trainer.plan(0)
  assert plan.steps["colluders"].noise_multiplier == pytest.approx(1.2)
  assert plan.steps["all"].noise_multiplier == pytest.approx(1.2 * math.sqrt(4 / 3))
  with pytest.raises(ValueError, match="no honest hospital"):
    _trainer(data, assumed_colluders=4, provision_for_colluders=True)


def test_summary_reports_both_epsilons_and_budgets_the_worse(data, tmp_path):
  quiet = dict(log=lambda _: None, options=configs.LoopOptions(tensorboard=False))
  plain = loop.run(_cfg(), data, str(tmp_path / "plain"), **quiet)
  colluded = loop.run(_cfg(assumed_colluders=2), data, str(tmp_path / "c2"), **quiet)
  assert colluded["epsilon_no_collusion"] == pytest.approx(plain["epsilon"])
  assert colluded["epsilon_colluders"] > colluded["epsilon_no_collusion"]
  assert colluded["epsilon"] == colluded["epsilon_colluders"]
  assert colluded["assumed_colluders"] == 2
  assert "epsilon_colluders" not in plain
  # The budget stops on the colluders' epsilon: a target between their epsilon
  # after 2 and 3 rounds, above the no-collusion epsilon of all 4 rounds.
  from dopamine_tff import accounting

  step = colluded["ledgers"][accounting.COLLUDERS]["steps"][0]

  def colluders_eps(k):
    spec = accounting.StepSpec(step["sampling_prob"], step["noise_multiplier"], k)
    return accounting.epsilon_of([spec], 1e-4)

  target = (colluders_eps(2) + colluders_eps(3)) / 2
  assert target > plain["epsilon"]  # without collusion all 4 rounds would fit
  stopped = loop.run(
    _cfg(assumed_colluders=2, target_epsilon=target), data, str(tmp_path / "budget"), **quiet
  )
  assert stopped["stop_reason"].startswith("budget") and stopped["rounds_run"] == 2
  assert stopped["epsilon"] == pytest.approx(colluders_eps(2)) and stopped["epsilon"] <= target


def test_colluders_apply_to_fscdp_only():
  with pytest.raises(ValueError, match="assumed_colluders"):
    configs.TrainConfig(setting="fpdp", assumed_colluders=1)
  with pytest.raises(ValueError, match="assumed_colluders"):
    configs.TrainConfig(setting="fscdp", assumed_colluders=-1)
