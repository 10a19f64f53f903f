"""summary.json: the run's facts and its privacy facts."""

import math

import pytest

from dopamine_tff import accounting
from dopamine_tff.program import summary


def test_a_warning_when_over_a_quarter_of_rounds_released_nothing():
  assert summary.skipped_warning(summary.RunFacts(8, 2, "completed", 1.0)) is None
  text = summary.skipped_warning(summary.RunFacts(8, 3, "completed", 1.0))
  assert text.startswith("3 of 8 rounds released nothing")
  assert summary.skipped_warning(summary.RunFacts(0, 0, "completed", 0.0)) is None


def test_privacy_summary_adds_overflow_to_delta_and_reports_collusion():
  parties = accounting.Parties([accounting.ALL, accounting.COLLUDERS], 1e-5)
  parties.record(
    {
      accounting.ALL: accounting.StepSpec(0.1, 1.0, 10),
      accounting.COLLUDERS: accounting.StepSpec(0.1, 0.8, 10),
    }
  )
  out = accounting.privacy_summary(
    parties,
    delta=1e-5,
    rounds_run=10,
    reported_kinds=["rdp"],
    overflow_per_round=1e-12,
    assumed_colluders=1,
  )
  eps = out["epsilon"]
  assert eps == parties.ledgers[accounting.COLLUDERS].epsilon()  # the worst party
  assert out["epsilon_no_collusion"] < eps == out["epsilon_colluders"]
  assert out["delta_with_overflow"] == pytest.approx(1e-5 + (1 + math.exp(eps)) * 10 * 1e-12)
  assert out["assumed_colluders"] == 1 and out["epsilon_rdp"] == eps
  plain = accounting.privacy_summary(
    accounting.Parties([], 1e-5, private=False), delta=1e-5, rounds_run=3
  )
  assert plain["epsilon"] is None and plain["delta"] is None
  assert "delta_with_overflow" not in plain
