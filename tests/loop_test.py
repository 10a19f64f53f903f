"""The round loop alone, over injected parts (no TFF, no data set).

A fake trainer moves one weight by +1 per released round and lets chosen
rounds abort or be skipped; the loop must charge the ledgers only for what
it released, keep the weights of unreleased rounds, stop at the budget,
average released weights only, and checkpoint on schedule and on Ctrl-C.
"""

import dataclasses
import math
import signal

import numpy as np
import pytest

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import runtime
from dopamine_tff.program import loop
from dopamine_tff.program import resume
from dopamine_tff.trainers import base


class FakeTrainer:
  overflow_per_round = None
  secagg = None

  def __init__(self, aborted=(), skipped=(), sigma=1.0):
    self.aborted, self.skipped, self.sigma = set(aborted), set(skipped), sigma
    self.ran = []

  def parties(self):
    return [accounting.ALL]

  def plan(self, r):
    step = {accounting.ALL: accounting.StepSpec(0.1, self.sigma)}
    return base.RoundPlan((0, 1), {} if r in self.skipped else step, skipped=r in self.skipped)

  def run(self, state, plan, r):
    self.ran.append(r)
    if r in self.aborted:
      return base.RoundOutcome(state, {"secure_clipped_count": 1}, False, "aborted on purpose")
    return base.RoundOutcome([state[0] + 1.0], {})

  def initial_state(self):
    return [np.float32(0.0)]

  def weights(self, state):
    return [np.asarray(state[0])]

  def epochs(self, rounds_done):
    return rounds_done * 0.1

  def state_arrays(self, state):
    return {"weights": [np.asarray(state[0])]}

  def state_from_arrays(self, arrays):
    return [arrays["weights"][0]]

  def describe(self):
    return "fake"


class Sink:
  def __init__(self):
    self.rows = []

  def write(self, row):
    self.rows.append(dict(row))


class Saves:
  every = 2

  def __init__(self):
    self.rounds = []

  def save(self, rounds_run, state, ema, wall_time_s):
    self.rounds.append((rounds_run, float(state[0]), None if ema is None else float(ema[0])))


class Stop:
  """A stop request after `after` checks, as resume.StopOnSigint (SIGINT)."""

  signum = signal.SIGINT

  def __init__(self, after=None):
    self.after, self.calls = after, 0

  @property
  def requested(self):
    self.calls += 1
    return self.after is not None and self.calls > self.after


def _loop(
  trainer, rounds=6, stop=None, target=None, ema_decay=0.0, saves=None, health=None, **kwargs
):
  cfg = configs.TrainConfig(rounds=rounds, target_epsilon=target, ema_decay=ema_decay)
  parties = accounting.Parties(trainer.parties(), cfg.delta)
  sink = Sink()
  parts = loop.Parts(
    trainer,
    parties,
    lambda w, with_train=True: {"test_accuracy": float(w[0]), "test_loss": 0.0},
    [sink],
    saves,
    stop or Stop(),
    lambda _: None,
    health or loop.Parts.health,
  )
  start = resume.Restored(trainer.initial_state(), 0, 0.0, None)
  return loop.Loop(cfg, parts, start, **kwargs), parties, sink


def test_unreleased_rounds_keep_the_weights_and_spend_nothing():
  trainer = FakeTrainer(aborted={1}, skipped={3})
  lp, parties, sink = _loop(trainer)
  state, rounds_run, reason = lp.rounds(trainer.initial_state())
  assert (rounds_run, reason) == (6, "completed")
  assert float(state[0]) == 4.0  # six rounds, one aborted, one skipped
  assert trainer.ran == [0, 1, 2, 4, 5]  # a skipped round is not even run
  assert len(parties.ledgers[accounting.ALL].steps) == 4
  assert [r["skipped"] for r in sink.rows] == [0, 1, 0, 1, 0, 0]
  assert [r["secure_clipped"] for r in sink.rows] == [0, 1, 0, 0, 0, 0]
  assert lp.skipped == 2
  eps = [r["epsilon"] for r in sink.rows]
  assert eps[0] == eps[1] and eps[2] == eps[3] and eps[3] < eps[4]


def test_the_budget_stops_before_the_round_that_would_exceed_it():
  trainer = FakeTrainer(sigma=2.0)
  ledger = accounting.PrivacyLedger(1e-4)
  for _ in range(3):
    ledger.record(accounting.StepSpec(0.1, 2.0))
  target = ledger.epsilon() * 1.0001  # three steps fit, a fourth does not
  lp, parties, sink = _loop(trainer, rounds=10, target=target)
  state, rounds_run, reason = lp.rounds(trainer.initial_state())
  assert rounds_run == 3 and reason.startswith("budget: round 4 would exceed")
  assert parties.epsilon() <= target
  assert float(state[0]) == 3.0


def test_the_eta_counts_to_the_round_the_budget_stops_at():
  """Issue 22: with --target_epsilon the ETA is to the budget's last round, not --rounds."""
  trainer = FakeTrainer(sigma=2.0, skipped={1})  # a skipped round costs nothing
  ledger = accounting.PrivacyLedger(1e-4)
  for _ in range(3):
    ledger.record(accounting.StepSpec(0.1, 2.0))
  lines = []
  lp, _, _ = _loop(trainer, rounds=10, target=ledger.epsilon() * 1.0001)
  lp.parts = dataclasses.replace(lp.parts, log=lines.append)
  _, rounds_run, _ = lp.rounds(trainer.initial_state())
  assert rounds_run == 4 and lp.last_round == 4  # rounds 1, 3 and 4 spend; 2 is skipped
  assert all("to round 4, where epsilon" in line for line in lines if "ETA" in line), lines
  progress = [line for line in lines if "ETA" in line]
  assert len(progress) == 4 and progress[-1].endswith(
    f"ETA 0 s to round 4, where epsilon {lp.cfg.target_epsilon:g} stops the run)"
  )
  assert lines[-1].startswith("stopping before round 5: budget")
  lp, _, _ = _loop(FakeTrainer(), rounds=3)
  lp.parts = dataclasses.replace(lp.parts, log=lines.append)
  lp.rounds([np.float32(0.0)])
  assert lp.last_round == 3 and lines[-1].endswith("ETA 0 s)")


def test_the_ema_averages_released_weights_only():
  trainer = FakeTrainer(aborted={2})
  lp, _, _ = _loop(trainer, rounds=4, ema_decay=0.5)
  state, _, _ = lp.rounds(trainer.initial_state())
  ema = None
  for t, w in ((1, 1.0), (2, 2.0), (4, 3.0)):  # round 3 released nothing
    ema = loop.ema_update(ema, [np.array([w], np.float32)], 0.5, t)
  assert float(lp.model_weights(state)[0]) == pytest.approx(float(ema[0][0]))
  assert float(lp.model_weights(state)[0]) != float(state[0])


def test_checkpoints_on_schedule_and_on_a_stop_request():
  saves = Saves()
  trainer = FakeTrainer()
  lp, _, _ = _loop(trainer, rounds=9, saves=saves, stop=Stop(after=3))
  with pytest.raises(resume.Interrupted, match="interrupted after round 3"):
    lp.rounds(trainer.initial_state())
  assert [r for r, _, _ in saves.rounds] == [2, 3]  # every 2, then the stop's
  saves2 = Saves()
  lp, _, _ = _loop(trainer, rounds=5, saves=saves2)
  state, rounds_run, _ = lp.rounds(trainer.initial_state())
  lp.save_last(state, rounds_run)
  assert [r for r, _, _ in saves2.rounds] == [2, 4, 5]


def test_a_non_private_setting_reports_infinite_epsilon():
  parties = accounting.Parties([], 1e-4, private=False)
  assert math.isinf(parties.epsilon())


def test_published_rows_carry_no_round_times_unless_asked():
  """A round's time grows with its Poisson batch: it stays out of the rows by default."""
  trainer = FakeTrainer(aborted={1})
  lp, _, sink = _loop(trainer, rounds=3)
  lp.rounds(trainer.initial_state())
  assert all(math.isnan(r["round_time_s"]) and math.isnan(r["wall_time_s"]) for r in sink.rows)
  lp, _, sink = _loop(FakeTrainer(), rounds=3, record_timings=True)
  lp.rounds(trainer.initial_state())
  assert all(r["round_time_s"] >= 0 and r["wall_time_s"] >= 0 for r in sink.rows)


def test_the_encode_failure_column_says_whether_not_how_many():
  class ThreeFlagged(FakeTrainer):
    def run(self, state, plan, r):
      return base.RoundOutcome(state, {"secure_clipped_count": 3}, False, "not encodable")

  trainer = ThreeFlagged()
  lp, _, sink = _loop(trainer, rounds=2)
  lp.rounds(trainer.initial_state())
  assert [r["secure_clipped"] for r in sink.rows] == [1, 1]


def test_the_loop_asks_the_runtime_it_was_handed_and_saves_before_a_dead_worker():
  """No process-wide runtime is read: the health check is the handed-in one."""
  calls = []

  def health():
    calls.append(len(calls))
    if len(calls) == 3:
      raise runtime.WorkerDied("worker 1 died (SIGKILL)")

  saves = Saves()
  lp, _, _ = _loop(FakeTrainer(), rounds=6, saves=saves, health=health)
  with pytest.raises(runtime.WorkerDied, match="worker 1 died"):
    lp.rounds([np.float32(0.0)])
  assert len(calls) == 3  # asked before every round
  assert saves.rounds[-1][:2] == (2, 2.0)  # the two rounds run are saved for --resume
