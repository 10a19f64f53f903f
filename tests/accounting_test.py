"""Accounting: known answers, an independent computation, the ledger."""

import math

import dp_accounting
import pytest

from dopamine_tff import accounting


def test_tf_privacy_published_mnist_rdp():
  # TF Privacy tutorial: n=60000, batch 256, noise 1.1, 60 epochs, delta 1e-5.
  q, steps = 256 / 60000, int(60 * 60000 / 256)
  eps = accounting.epsilon_of([accounting.StepSpec(q, 1.1, steps)], 1e-5)
  assert eps == pytest.approx(2.597, abs=0.01)


def test_pld_is_tighter_on_mnist():
  q, steps = 256 / 60000, int(60 * 60000 / 256)
  eps = accounting.epsilon_of([accounting.StepSpec(q, 1.1, steps)], 1e-5, "pld")
  assert eps == pytest.approx(2.38, abs=0.02)


def test_ledger_equals_a_fresh_dp_accounting_computation():
  ledger = accounting.PrivacyLedger(1e-4)
  steps = [accounting.StepSpec(0.03425, 1.15)] * 50 + [accounting.StepSpec(0.03425, 0.9)] * 7
  for s in steps:
    ledger.record(s)
  acc = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS))
  for s in steps:
    acc.compose(
      dp_accounting.PoissonSampledDpEvent(
        s.sampling_prob, dp_accounting.GaussianDpEvent(s.noise_multiplier)
      )
    )
  assert ledger.epsilon() == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)


def test_epsilon_if_does_not_record():
  ledger = accounting.PrivacyLedger(1e-5)
  ledger.record(accounting.StepSpec(0.01, 1.0, 10))
  before = ledger.epsilon()
  after = ledger.epsilon_if(accounting.StepSpec(0.01, 1.0, 10))
  assert after > before
  assert ledger.epsilon() == before
  assert after == pytest.approx(accounting.epsilon_of([accounting.StepSpec(0.01, 1.0, 20)], 1e-5))


def test_ledger_round_trips_through_json():
  ledger = accounting.PrivacyLedger(1e-4)
  ledger.record(accounting.StepSpec(0.1, 1.3, 5))
  again = accounting.PrivacyLedger.from_json(ledger.to_json())
  assert again.epsilon() == ledger.epsilon()


def test_noise_free_steps_are_infinitely_private_never():
  ledger = accounting.PrivacyLedger(1e-4)
  assert ledger.epsilon() == 0.0
  ledger.record(accounting.StepSpec(0.5, 0.0))
  assert math.isinf(ledger.epsilon())


def test_noise_multiplier_for_inverts_epsilon():
  sigma = accounting.noise_multiplier_for(3.0, sampling_prob=0.05, steps=500, delta=1e-5)
  eps = accounting.epsilon_of([accounting.StepSpec(0.05, sigma, 500)], 1e-5)
  assert eps == pytest.approx(3.0, abs=0.01)
  assert eps <= 3.0 + 1e-6


def test_more_noise_less_epsilon_more_steps_more_epsilon():
  e = lambda q, s, t: accounting.epsilon_of([accounting.StepSpec(q, s, t)], 1e-5)
  assert e(0.01, 2.0, 100) < e(0.01, 1.0, 100)
  assert e(0.01, 1.0, 100) < e(0.01, 1.0, 200)
  assert e(0.01, 1.0, 100) < e(0.02, 1.0, 100)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"sampling_prob": 1.5, "noise_multiplier": 1.0}, "sampling_prob"),
    ({"sampling_prob": 0.0, "noise_multiplier": 1.0}, "sampling_prob"),
    ({"sampling_prob": 0.1, "noise_multiplier": -1.0}, "noise_multiplier"),
  ],
)
def test_bad_steps_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    accounting.StepSpec(**kwargs)


def test_bad_ledger_and_target_are_rejected():
  with pytest.raises(ValueError, match="delta"):
    accounting.PrivacyLedger(1.5)
  with pytest.raises(ValueError, match="accountant"):
    accounting.PrivacyLedger(1e-5, "moments")
  with pytest.raises(ValueError, match="target_epsilon"):
    accounting.noise_multiplier_for(-1.0, sampling_prob=0.1, steps=10, delta=1e-5)


def test_pld_ledger_equals_a_fresh_pld_accountant():
  ledger = accounting.PrivacyLedger(1e-5, "pld")
  steps = [accounting.StepSpec(0.05, 1.1)] * 30 + [accounting.StepSpec(0.05, 0.8)] * 5
  for s in steps:
    ledger.record(s)
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
  for s in steps:
    acc.compose(
      dp_accounting.PoissonSampledDpEvent(
        s.sampling_prob, dp_accounting.GaussianDpEvent(s.noise_multiplier)
      )
    )
  assert ledger.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
  # PLD is tighter than RDP on the same events.
  assert ledger.epsilon("pld") < ledger.epsilon("rdp")


def test_accounting_imports_without_tensorflow():
  """Issue 20: the package __init__ imported TensorFlow, so this module took 15-25 s."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = "import sys, dopamine_tff.accounting; print('tensorflow' in sys.modules)"
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "False"


def test_pld_calibration_fits_in_3_gb(tmp_path):
  """Issue 22 item 10: the PLD search started at sigma 0.05 and died of MemoryError
  under 6 GB (seen: 'Unable to allocate 1.97 GiB' under this test's 3 GB limit)."""
  import os
  import subprocess
  import sys

  code = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30)); "
    "from dopamine_tff import accounting as a; "
    "kw = dict(sampling_prob=0.05, steps=400, delta=1e-4); "
    "print(a.noise_multiplier_for(10.4, kind='rdp', **kw), a.noise_multiplier_for(10.4, kind='pld', **kw))"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rdp, pld = (float(v) for v in proc.stdout.split())
  assert 0.5 * rdp < pld < rdp  # PLD is tighter, so it needs less noise
  step = accounting.StepSpec(0.05, pld, 400)
  assert accounting.epsilon_of([step], 1e-4, "pld") <= 10.4 + 1e-3
  assert accounting.epsilon_of([accounting.StepSpec(0.05, pld * 0.99, 400)], 1e-4, "pld") > 10.4


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_rounds_within_is_where_a_round_by_round_budget_stops(kind):
  """Parties.rounds_within (the ETA's end, issue 22) agrees with would_exceed stepped."""
  parties = accounting.Parties(["0", "1"], 1e-5, kind)
  parties.record({"0": accounting.StepSpec(0.05, 1.0, 3)})
  future = [
    {"0": accounting.StepSpec(0.05, 1.0, 2)} if r % 3 else {"1": accounting.StepSpec(0.1, 0.9, 4)}
    for r in range(60)
  ]
  probe = accounting.Parties(["0", "1"], 1e-5, kind)
  probe.restore(parties.to_json())
  for steps in future[:37]:
    probe.record(steps)
  target = probe.epsilon() * 1.0001  # 37 rounds fit, 38 do not (when 38 spends on that party)
  stepped = accounting.Parties(["0", "1"], 1e-5, kind)
  stepped.restore(parties.to_json())
  n = 0
  while n < len(future) and not stepped.would_exceed(future[n], target):
    stepped.record(future[n])
    n += 1
  assert 0 < n < len(future)
  assert parties.rounds_within(future, target) == n
  assert len(parties.ledgers["0"].steps) == 1  # nothing recorded
  assert parties.rounds_within(future, None) == len(future)
  assert parties.rounds_within(future, 1e6) == len(future)
