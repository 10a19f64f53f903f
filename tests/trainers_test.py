"""Trainers: the protocol the loop relies on, the setting table, the round's event."""

import dataclasses
import math
import tempfile

import dp_accounting
import numpy as np
import pytest

from dopamine_tff import accounting
from dopamine_tff import dp_sgd
from dopamine_tff import trainers
from dopamine_tff.trainers import base
from dopamine_tff.trainers import fedavg
from dopamine_tff.trainers import fscdp
from dopamine_tff.trainers import tf_privacy_cdp
from tests import helpers


def _cfg(**kw):
  # The event test reruns the same noise (seeded).
  base = dict(rounds=3, batch_size=16, local_epochs=1, seed=5, insecure_seeded_noise=True)
  return helpers.tiny_cfg(**{**base, **kw})


CASES = {
  "fscdp": (dict(setting="fscdp"), fscdp.DpSgdTrainer, dict(federated=True)),
  "cdp": (dict(setting="cdp"), fscdp.DpSgdTrainer, dict(federated=False)),
  "cdp_tfp": (dict(setting="cdp", cdp_impl="tf_privacy"), tf_privacy_cdp.TfPrivacyCdpTrainer, {}),
  "f": (dict(setting="f"), fedavg.FedAvgTrainer, dict(local_dp=False, centralised=False)),
  "fpdp": (dict(setting="fpdp"), fedavg.FedAvgTrainer, dict(local_dp=True, centralised=False)),
  "c": (dict(setting="c"), fedavg.FedAvgTrainer, dict(local_dp=False, centralised=True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_setting_gets_its_trainer_and_keeps_the_protocol(name, data):
  kw, cls, flags = CASES[name]
  trainer = trainers.make_trainer(_cfg(**kw), data, tempfile.mkdtemp())
  assert type(trainer) is cls
  for flag, value in flags.items():
    assert getattr(trainer, flag) is value, flag
  for method in ("parties", "plan", "run", "initial_state", "weights", "epochs"):
    assert callable(getattr(trainer, method)), method
  for method in ("state_arrays", "state_from_arrays", "describe"):
    assert callable(getattr(trainer, method)), method
  assert trainer.overflow_per_round is None or 0 <= trainer.overflow_per_round < 1e-6
  state = trainer.initial_state()
  plan = trainer.plan(0)
  assert set(plan.steps) <= set(trainer.parties())
  outcome = trainer.run(state, plan, 0)
  assert isinstance(outcome, base.RoundOutcome) and outcome.released
  assert outcome.reason is None
  moved = [a - b for a, b in zip(trainer.weights(outcome.state), trainer.weights(state))]
  assert any(np.abs(m).max() > 0 for m in moved)
  again = trainer.state_from_arrays(trainer.state_arrays(outcome.state))
  for a, b in zip(trainer.weights(again), trainer.weights(outcome.state)):
    np.testing.assert_array_equal(a, b)


def _sigma_of(event) -> float:
  """The noise multiplier inside (self-composed, Poisson-sampled) Gaussian events."""
  while not isinstance(event, dp_accounting.GaussianDpEvent):
    event = event.event
  return float(event.noise_multiplier)


def test_the_query_s_own_event_is_the_event_the_ledger_records(data):
  """R5: the DP query's DpEvent for the round's noisy sum equals the host's.

  Hospitals 1 and 3 drop in round 2: the sum then holds 2 shares of
  sigma*C/sqrt(4). The query over that sum must report the same sigma as the
  trainer's plan, and with one assumed colluder one share fewer.
  """
  cfg = _cfg(setting="fscdp", dropout_schedule=((2, (1, 3)),), assumed_colluders=1)
  trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
  share = cfg.noise_multiplier * cfg.l2_norm_clip / math.sqrt(4)
  for r, unknown, party in ((0, 4, accounting.ALL), (1, 2, accounting.ALL), (1, 1, "colluders")):
    host = trainer.plan(r).steps[party].event()
    query = dp_sgd.sum_event(cfg.sampling_prob, cfg.l2_norm_clip, share * math.sqrt(unknown))
    assert isinstance(host, dp_accounting.SelfComposedDpEvent) and host.count == 1
    assert isinstance(host.event, type(query))
    assert host.event.sampling_probability == query.sampling_probability
    assert _sigma_of(host) == pytest.approx(_sigma_of(query), rel=1e-6)
  # The comparison can fail: the nominal sigma is not the dropped round's.
  assert _sigma_of(trainer.plan(1).steps[accounting.ALL].event()) != pytest.approx(1.0)


def test_an_unencodable_update_is_not_released(data):
  """A secure-sum range far too small for the noise: the round is abandoned."""
  trainer = trainers.make_trainer(
    _cfg(setting="fscdp", secure_sum_bound=1e-12), data, tempfile.mkdtemp()
  )
  state = trainer.initial_state()
  outcome = trainer.run(state, trainer.plan(0), 0)
  assert not outcome.released
  assert "non-finite or out-of-range" in outcome.reason
  assert outcome.state is state
  assert outcome.measurements["secure_clipped_count"] == 1


def test_provisioning_refuses_what_it_cannot_cover():
  with pytest.raises(ValueError, match="min_surviving_hospitals=5 exceeds the 4"):
    fscdp.provisioned_shares(_cfg(setting="fscdp", min_surviving_hospitals=5), 4)
  cfg = _cfg(setting="fscdp", assumed_colluders=2, provision_for_colluders=True)
  assert fscdp.provisioned_shares(cfg, 4) == 2
  with pytest.raises(ValueError, match="leave no honest"):
    fscdp.provisioned_shares(dataclasses.replace(cfg, min_surviving_hospitals=2), 4)
