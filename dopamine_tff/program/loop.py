"""Runs rounds of a setting: budget check, round, ledger, EMA, outputs, checkpoint.

``run`` is the entry point. It checks everything before writing anything,
assembles the parts (trainer, parties' ledgers, evaluator, output sinks,
checkpointer, stop request) and hands them to a ``Loop``, which runs:

    plan -> budget -> run -> record -> EMA -> row -> sinks -> checkpoint

Algorithm 1, lines 17-19: before each round we ask the ledgers what epsilon
would be after it; if that exceeds the target, we stop and keep the weights of
the previous round. With ``resume`` a killed run continues from its newest
checkpoint: rows of metrics.csv after that round are dropped and recomputed,
so the files end up as an uninterrupted run's (timings aside).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math
import os
import time

import numpy as np

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import init_weights
from dopamine_tff import runtime
from dopamine_tff import seeds
from dopamine_tff import trainers
from dopamine_tff.data import loaders
from dopamine_tff.program import evaluation
from dopamine_tff.program import outputs
from dopamine_tff.program import resume
from dopamine_tff.program import run_dir
from dopamine_tff.program import summary as summary_lib


def ema_update(ema, weights, decay: float, rounds_run: int):
  """One step of the released weights' moving average (post-processing).

  The first call (``ema`` None) starts it at ``weights``; after that the decay
  ramps up as min(decay, (1 + t) / (10 + t)) at round t.
  """
  if ema is None:
    return [np.array(w, np.float32) for w in weights]
  d = min(decay, (1 + rounds_run) / (10 + rounds_run))
  # e + (1 - d)(w - e): a weight that does not move (a frozen layer) stays bit for bit.
  return [(e + np.float32(1 - d) * (np.asarray(w, np.float32) - e)) for e, w in zip(ema, weights)]


@dataclasses.dataclass(frozen=True)
class Parts:
  """What the loop runs with; built by ``run`` (tests may build their own)."""

  trainer: trainers.base.Trainer
  parties: accounting.Parties
  evaluator: evaluation.Evaluator
  sinks: list  # each with write(row)
  checkpointer: resume.Checkpointer | None
  stop: resume.StopOnSigint
  log: Callable[[str], None]
  # WorkerDied when a TFF worker died under the run (the Runtime handed to run()).
  health: Callable[[], None] = lambda: None


class Loop:
  """The round loop over injected parts."""

  def __init__(
    self,
    cfg: configs.TrainConfig,
    parts: Parts,
    start: resume.Restored,
    *,
    record_timings: bool = False,
  ):
    self.cfg, self.parts = cfg, parts
    # A round's time grows with its Poisson batches: a side channel, so the
    # published rows carry it only when asked (the log still shows the pace).
    self.record_timings = record_timings
    self.start_round = start.round
    self.clock = time.monotonic() - start.wall_time_s
    self.ema = start.ema  # EMA of the released weights (cfg.ema_decay > 0)
    self.skipped = start.skipped
    self.last_eval: dict = {}
    self.last_round = cfg.rounds  # where the budget stops the run (rounds())

  def wall(self) -> float:
    return time.monotonic() - self.clock

  def model_weights(self, state):
    """The weights evaluated and saved: the EMA when enabled, else the state's."""
    if self.cfg.ema_decay > 0 and self.ema is not None:
      return self.ema
    return self.parts.trainer.weights(state)

  def rounds(self, state) -> tuple[object, int, str]:
    """Runs rounds until the last, the budget or a stop request.

    Returns (state, rounds run, stop reason); raises resume.Interrupted.
    """
    cfg, parts, rounds_run, first = self.cfg, self.parts, self.start_round, time.monotonic()
    self.last_round = self.budget_stop()
    for r in range(self.start_round, cfg.rounds):
      try:
        parts.health()
      except runtime.WorkerDied:
        self.save_last(state, rounds_run)  # --resume continues from the last round run
        raise
      if parts.stop.requested:
        self.save_last(state, rounds_run, again=True)
        raise resume.Interrupted(rounds_run, parts.checkpointer is not None, parts.stop.signum)
      plan = parts.trainer.plan(r)
      if parts.parties.would_exceed(plan.steps, cfg.target_epsilon):
        reason = f"budget: round {r + 1} would exceed epsilon {cfg.target_epsilon}"
        parts.log(f"stopping before round {r + 1}: {reason}")
        return state, rounds_run, reason
      try:
        state, row = self.one_round(state, plan, r)
      except runtime.WorkerDied:
        if parts.stop.requested:  # the signal reached the worker too (a process group's)
          self.save_last(state, rounds_run, again=True)
          checkpointed = parts.checkpointer is not None
          raise resume.Interrupted(rounds_run, checkpointed, parts.stop.signum) from None
        self.save_last(state, rounds_run)  # --resume continues from the last round run
        raise
      rounds_run = r + 1
      self.save_due(state, rounds_run)
      if not math.isnan(row["test_accuracy"]):
        self._progress(row, (time.monotonic() - first) / (rounds_run - self.start_round))
    return state, rounds_run, "completed"

  def budget_stop(self) -> int:
    """The last round the run will reach: --rounds, or earlier where --target_epsilon
    stops it (from the rounds' plans; a round that aborts costs nothing, so the run
    may go further)."""
    cfg = self.cfg
    if cfg.target_epsilon is None:
      return cfg.rounds
    future = [self.parts.trainer.plan(r).steps for r in range(self.start_round, cfg.rounds)]
    return self.start_round + self.parts.parties.rounds_within(future, cfg.target_epsilon)

  def one_round(self, state, plan, r: int):
    """Runs round `r` of `plan`; records it; returns (state, its row)."""
    t0 = time.monotonic()
    if plan.skipped:
      # Too few hospitals delivered: nothing is applied or released, so the
      # weights and the ledgers stay as they were.
      self.parts.log(f"round {r + 1} skipped: {plan.skip_reason or 'too few hospitals delivered'}")
      measurements = {}
    else:
      try:
        outcome = self.parts.trainer.run(state, plan, r)
      except Exception:
        self.parts.health()  # a dead TFF worker explains the failure: say that instead
        raise
      state, measurements = outcome.state, outcome.measurements
      if not outcome.released:
        # The protocol could not unmask: nothing was released, so the weights
        # and the ledgers stay as they were.
        self.parts.log(f"round {r + 1} skipped: {outcome.reason}")
        plan = dataclasses.replace(plan, steps={}, skipped=True)
    self.parts.parties.record(plan.steps)
    if not plan.skipped and self.cfg.ema_decay > 0:  # post-processing: no privacy cost
      weights = self.parts.trainer.weights(state)
      self.ema = ema_update(self.ema, weights, self.cfg.ema_decay, r + 1)
    self.skipped += int(plan.skipped)
    self.round_time = time.monotonic() - t0
    row = self._row(state, plan, measurements, r + 1, self.round_time)
    for sink in self.parts.sinks:
      sink.write(row)
    return state, row

  def _row(self, state, plan, measurements, rounds_run, round_time):
    cfg, parties = self.cfg, self.parts.parties
    row = dict.fromkeys(outputs.METRIC_FIELDS, float("nan"))
    row.update(
      round=rounds_run,
      epochs=self.parts.trainer.epochs(rounds_run),
      epsilon=parties.epsilon(),
      num_clients=len(plan.clients),
      skipped=int(plan.skipped),
      # Whether any hospital's update could not be encoded, never how many.
      secure_clipped=min(1, int(measurements.get("secure_clipped_count", 0))),
    )
    if self.record_timings:
      row.update(round_time_s=round_time, wall_time_s=self.wall())
    evaluate = rounds_run % cfg.eval_every == 0 or rounds_run == cfg.rounds
    for kind in ("rdp", "pld"):
      # PLD costs ~0.2 s a call: every round only when it is the budget.
      if cfg.reports(kind) and (evaluate or kind == cfg.budget_accountant):
        row[f"epsilon_{kind}"] = parties.epsilon(kind)
    if evaluate:
      row.update(self.parts.evaluator(self.model_weights(state)))
      self.last_eval = dict(row)
    return row

  @property
  def _split(self) -> str:
    return getattr(self.parts.evaluator, "split", "test")

  def _progress(self, row, per_round: float) -> None:
    cfg = self.cfg
    end = self.last_round
    budget = end < cfg.rounds
    self.parts.log(
      f"round {row['round']}/{cfg.rounds}"
      + (f" ({self.skipped} skipped)" if self.skipped else "")
      + f" epochs {row['epochs']:.2f} "
      f"{self._split}_acc {row['test_accuracy']:.4f} {self._split}_loss {row['test_loss']:.4f} "
      + (f"kappa {row['kappa']:.3f} " if math.isfinite(row.get("kappa", math.nan)) else "")
      + (f"eps {row['epsilon']:.3f}" if math.isfinite(row["epsilon"]) else "not private")
      + f" ({self.round_time:.2f} s/round, "
      f"ETA {per_round * max(0, end - row['round']):.0f} s"
      + (f" to round {end}, where epsilon {cfg.target_epsilon:g} stops the run)" if budget else ")")
    )

  def save_due(self, state, rounds_run: int) -> None:
    """Checkpoints every `checkpoint_every` rounds."""
    ckpt = self.parts.checkpointer
    if ckpt is not None and rounds_run % ckpt.every == 0:
      ckpt.save(rounds_run, state, self.ema, self.wall())

  def save_last(self, state, rounds_run: int, *, again: bool = False) -> None:
    """Checkpoints the last round run if this start ran it and it is unsaved (or `again`)."""
    ckpt = self.parts.checkpointer
    if ckpt is None or rounds_run <= self.start_round:
      return
    if again or rounds_run % ckpt.every:
      ckpt.save(rounds_run, state, self.ema, self.wall())


def _log_start(cfg, trainer, options, start_round, log) -> None:
  log(trainer.describe())
  if cfg.insecure_seeded_noise:
    log(seeds.SEEDED_WARNING)
  elif cfg.private:
    log("noise randomness: secret (OS CSPRNG, fresh per hospital and round, never written)")
  if options.resume:
    fresh = "" if cfg.insecure_seeded_noise else " with fresh secret randomness (nothing replayed)"
    log(
      f"resuming after round {start_round}{fresh}"
      if start_round
      else "no checkpoint: starting afresh"
    )


def run(
  cfg: configs.TrainConfig,
  data: loaders.FederatedData,
  output_dir: str,
  *,
  hparams: dict | None = None,
  data_config: loaders.DataConfig | None = None,
  options: configs.LoopOptions = configs.LoopOptions(),
  log: Callable[[str], None] = print,
  rt: runtime.Runtime | None = None,
) -> dict:
  """Trains `cfg.setting` on `data`; returns the summary (also in summary.json).

  `rt` is the TFF Runtime the binary started for `cfg.runtime == "tff"` (its
  workers' health, traffic and whether they read this host's files); None for
  the in-process runtime, or a context the caller installed itself.

  Nothing is written before the checks pass: a directory holding another run
  (without `options.resume` or `options.overwrite`), a configuration the data
  refutes (e.g. a dropout schedule naming hospitals that do not exist), or a
  budget that admits no round raise RunDirError, ValueError or resume.BudgetError.
  Ctrl-C (SIGINT, main thread) ends the round under way, checkpoints it and
  raises resume.Interrupted.
  """
  cfg.check_hospitals(len(data.hospitals))
  cfg.check_delta(_units(cfg, data))
  with run_dir.exclusive(output_dir):  # one run per directory, for the whole run
    return _locked_run(cfg, data, output_dir, hparams, data_config, options, log, rt)


def _locked_run(cfg, data, output_dir, hparams, data_config, options, log, rt) -> dict:
  run_dir.check_output_dir(output_dir, options)
  hparams = dict(hparams or {})
  if data_config is not None:
    hparams["data"] = dict(
      dataclasses.asdict(data_config), image_size=data_config.resolved_image_size
    )
  hparams.setdefault("num_train_examples", data.num_train)
  if cfg.init_weights:
    hparams["init_weights_sha256"] = init_weights.sha256_of(cfg.init_weights)
  # The hospitals' shard files (copies of the training data) are scratch:
  # owner-only, under the run's own directory, removed on every exit that runs
  # code; a killed run's are removed by the next start.
  scratch = run_dir.make_scratch(output_dir, log)
  try:
    ships = rt is not None and rt.ships_data
    trainer = trainers.make_trainer(cfg, data, scratch, ships_data=ships)
    return _run(cfg, data, output_dir, trainer, hparams, options, log, rt)
  finally:
    run_dir.remove_scratch(output_dir)


def _units(cfg, data) -> int:
  """N, the protected units the guarantee counts: training examples, or patients."""
  ids = [h.patients for h in data.hospitals]
  if cfg.privacy_unit == "patient" and all(p is not None for p in ids):
    return len(np.unique(np.concatenate(ids)))
  return data.num_train


def _sinks(output_dir, options, start_round):
  metrics = outputs.MetricsFile(os.path.join(output_dir, "metrics.csv"), start_round)
  sinks = [metrics]
  if options.tensorboard:
    sinks.append(outputs.TensorBoardSink(os.path.join(output_dir, "tensorboard")))
  return metrics, sinks


def _run(cfg, data, output_dir, trainer, hparams, options, log, rt) -> dict:
  parties = accounting.Parties(trainer.parties(), cfg.delta, cfg.budget_accountant, cfg.private)
  start = resume.start(cfg, data, output_dir, trainer, parties, options, log)
  os.makedirs(output_dir, exist_ok=True)
  run_dir.write_json(os.path.join(output_dir, "hparams.json"), hparams)
  _log_start(cfg, trainer, options, start.round, log)
  metrics, sinks = _sinks(output_dir, options, start.round)
  start = dataclasses.replace(start, skipped=metrics.skipped)
  evaluator = evaluation.Evaluator(cfg, data)
  initial = evaluator(trainer.weights(trainer.initial_state()), with_train=False)
  log(
    f"round 0 (starting weights: {summary_lib.origin(trainer)}): {evaluator.split}_acc "
    f"{initial['test_accuracy']:.4f} {evaluator.split}_loss {initial['test_loss']:.4f}"
  )
  checkpointer = (
    resume.Checkpointer(
      os.path.join(output_dir, "checkpoints"), options.checkpoint_every, cfg, data, trainer, parties
    )
    if options.checkpoint_every
    else None
  )
  try:
    with resume.StopOnSigint() as stop:
      health = rt.check_alive if rt is not None else Parts.health
      parts = Parts(trainer, parties, evaluator, sinks, checkpointer, stop, log, health)
      loop = Loop(cfg, parts, start, record_timings=options.record_timings)
      state, rounds_run, stop_reason = loop.rounds(start.state)
  finally:
    for sink in sinks:
      sink.close()
  loop.save_last(state, rounds_run)  # so --rounds can be raised later
  facts = summary_lib.RunFacts(
    rounds_run,
    loop.skipped,
    stop_reason,
    loop.wall(),
    initial,
    rt.traffic() if rt is not None else {},
  )
  weights = loop.model_weights(state)
  summary = summary_lib.finish(
    output_dir, cfg, data, trainer, parties, evaluator, weights, loop.last_eval, facts, log
  )
  summary["per_round_timings"] = (
    "recorded in metrics.csv and TensorBoard (--record_timings): a side channel, a "
    "round's time grows with its Poisson batch sizes"
    if options.record_timings
    else "not recorded (a side channel: a round's time grows with its Poisson batch sizes)"
  )
  if options.audit:
    summary["audit"] = summary_lib.audit_model(cfg, evaluator, weights, summary, log)
  run_dir.write_json(os.path.join(output_dir, "summary.json"), summary)
  return summary
