"""Runs rounds of a setting: budget check, round, ledger, evaluation, files.

Writes to the output directory, as each round ends:
* hparams.json: every hyper-parameter of the run (written first);
* metrics.csv: one row per round (flushed every round);
* tensorboard/: the same scalars as TensorBoard events;
* checkpoints/: program state, ledgers and round every ``checkpoint_every``
  rounds (dopamine_tff/checkpoint.py);
* summary.json: final accuracy, epsilon, delta, rounds run, why it stopped;
* model.keras and final_weights.npz: the final global model.

With ``resume`` a killed run continues from its newest checkpoint: rows of
metrics.csv after that round are dropped and recomputed, so the files end up
as an uninterrupted run's (timings aside).

Algorithm 1, lines 17-19: before each round we ask the ledger what epsilon
would be after it; if that exceeds the target, we stop and keep the weights of
the previous round.
"""

from __future__ import annotations

from collections.abc import Callable
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

from dopamine_tff import accounting
from dopamine_tff import audit
from dopamine_tff import checkpoint
from dopamine_tff import configs
from dopamine_tff import models
from dopamine_tff import seeds
from dopamine_tff import settings
from dopamine_tff.data import loaders

METRIC_FIELDS = (
  "round",
  "epochs",
  "train_loss",
  "test_accuracy",
  "test_loss",
  "epsilon",
  "epsilon_rdp",
  "epsilon_pld",
  "num_clients",
  "skipped",
  "secure_clipped",
  "round_time_s",
  "wall_time_s",
)
TRAIN_EVAL_EXAMPLES = 2000
# What a run writes into its directory (and --overwrite removes).
RUN_FILES = (
  "checkpoints",
  "tensorboard",
  "metrics.csv",
  "summary.json",
  "model.keras",
  "final_weights.npz",
  "hparams.json",
)
# Fields that may change when a run is resumed: they do not alter past rounds.
RESUMABLE_CHANGES = ("rounds", "target_epsilon", "eval_every")


class RunDirError(ValueError):
  """The output directory holds a run that this start would clobber or mismatch."""


class BudgetError(ValueError):
  """--target_epsilon admits not even the first round."""


class Interrupted(Exception):  # noqa: N818 (a stop, not an error)
  """Ctrl-C: the run stopped after a completed, checkpointed round."""

  def __init__(self, rounds_run: int, checkpointed: bool):
    self.rounds_run, self.checkpointed = rounds_run, checkpointed
    super().__init__(
      f"interrupted after round {rounds_run}; rerun with --resume to continue"
      if checkpointed
      else f"interrupted after round {rounds_run} (no checkpoint: --checkpoint_every=0)"
    )


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How the loop saves its work.

  Attributes:
    checkpoint_every: save program state every this many rounds (0: never).
    resume: continue from the newest checkpoint in the output directory.
    tensorboard: also write TensorBoard events.
    audit: run membership-inference attacks on the final model
      (dopamine_tff/audit.py) and put the results in summary.json.
    overwrite: replace a previous run in the output directory. Without it
      (and without resume) a directory holding a run is refused.
  """

  checkpoint_every: int = 10
  resume: bool = False
  tensorboard: bool = True
  audit: bool = False
  overwrite: bool = False

  def __post_init__(self):
    if self.checkpoint_every < 0:
      raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


def _fmt(v):
  if isinstance(v, float):
    return "inf" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.6g}")
  return v


def _worst_epsilon(ledgers: dict, private: bool, kind: str | None = None) -> float:
  """The largest epsilon over the privacy parties (FPDP: hospitals)."""
  if not private:
    return math.inf
  if not ledgers:
    return 0.0
  return max(ledger.epsilon(kind) for ledger in ledgers.values())


def _over_budget(cfg, ledgers, plan) -> bool:
  if cfg.target_epsilon is None:
    return False
  return any(
    ledgers[party].epsilon_if(step) > cfg.target_epsilon for party, step in plan.steps.items()
  )


def _finite_or_none(x: float):
  return x if math.isfinite(x) else None


def write_json(path: str, blob: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(blob, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def run_identity(cfg: configs.TrainConfig, data: loaders.FederatedData) -> dict:
  """What a checkpoint belongs to: every field that changes past rounds.

  With a learning-rate schedule the round count shapes every step, so it must
  not change on resume.
  """
  free = [k for k in RESUMABLE_CHANGES if not (k == "rounds" and cfg.lr_schedule != "constant")]
  ident = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}
  ident.update(
    data=data.name,
    image_shape=list(data.image_shape),
    hospital_sizes=[len(h) for h in data.hospitals],
  )
  return json.loads(json.dumps(ident, sort_keys=True, default=str))


def fingerprint(cfg: configs.TrainConfig, data: loaders.FederatedData) -> str:
  """Identifies what a checkpoint belongs to (resume refuses a mismatch)."""
  blob = json.dumps(run_identity(cfg, data), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _differences(saved: dict, now: dict) -> str:
  keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  return ", ".join(f"--{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in keys)


def previous_run_files(output_dir: str) -> list[str]:
  """The run files (RUN_FILES, hparams.json aside) already in `output_dir`."""
  if not os.path.isdir(output_dir):
    return []
  found = [n for n in RUN_FILES[:-1] if os.path.exists(os.path.join(output_dir, n))]
  if "checkpoints" in found and not checkpoint.rounds(os.path.join(output_dir, "checkpoints")):
    found.remove("checkpoints")
  return found


def check_output_dir(output_dir: str, options: LoopOptions) -> None:
  """RunDirError when `output_dir` holds a run and neither resume nor overwrite is set."""
  found = previous_run_files(output_dir)
  if found and not (options.resume or options.overwrite):
    raise RunDirError(
      f"{output_dir} holds a previous run ({', '.join(found)}); pass --resume to continue "
      "it or --overwrite to replace it"
    )


def remove_run_files(output_dir: str) -> None:
  """Deletes what a run wrote (RUN_FILES), leaving anything else in place."""
  for name in RUN_FILES:
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


class _Evaluator:
  """Loss and accuracy of global weights on the test set and a train subset."""

  def __init__(self, cfg, data):
    self.model = models.build(cfg.model, data.image_shape, data.num_classes)
    pooled = data.pooled()
    self.pooled = pooled
    sub = np.random.default_rng(cfg.seed).permutation(len(pooled))[:TRAIN_EVAL_EXAMPLES]
    self.train = (pooled.images[sub], pooled.labels[sub])
    self.test = (data.test.images, data.test.labels)

  def __call__(self, weights, with_train=True):
    out = {}
    if with_train:
      out["train_loss"], _ = settings.evaluate(self.model, weights, *self.train)
    out["test_loss"], out["test_accuracy"] = settings.evaluate(self.model, weights, *self.test)
    return out


class _MetricsFile:
  """metrics.csv, appended and flushed every round; truncated on resume."""

  def __init__(self, path: str, keep_through: int):
    rows = []
    if keep_through > 0 and os.path.isfile(path):
      with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("round") and int(r["round"]) <= keep_through]
    # Rounds that released nothing (aborted, or too few hospitals delivered).
    self.skipped = sum(int(r.get("skipped") or 0) for r in rows)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
      writer.writeheader()
      writer.writerows(rows)
    os.replace(tmp, path)
    self._file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
    self._writer = csv.DictWriter(self._file, fieldnames=METRIC_FIELDS)

  def write(self, row: dict) -> None:
    self.skipped += int(row.get("skipped", 0))
    self._writer.writerow({k: _fmt(v) for k, v in row.items()})
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _restore(trainer, ledgers, ckpt_dir, cfg, data):
  found = checkpoint.load_latest(ckpt_dir)
  if found is None:
    return None
  arrays, meta = found
  ident = run_identity(cfg, data)
  if meta.get("fingerprint") != fingerprint(cfg, data):
    saved = meta.get("identity")
    what = (
      f"these settings differ: {_differences(saved, ident)}"
      if saved is not None
      else f"fingerprint {meta.get('fingerprint')} (a checkpoint of an older version)"
    )
    raise RunDirError(
      f"cannot resume: the checkpoint in {ckpt_dir} belongs to another configuration; "
      f"{what}. Only {', '.join('--' + k for k in RESUMABLE_CHANGES)} may change on "
      "resume; use --overwrite or a new --output_dir"
    )
  if meta["round"] > cfg.rounds:
    raise RunDirError(
      f"cannot resume: the checkpoint in {ckpt_dir} is at round {meta['round']}, "
      f"beyond --rounds={cfg.rounds}; raise --rounds"
    )
  for party, blob in meta["ledgers"].items():
    ledgers[party] = accounting.PrivacyLedger.from_json(blob)
  ema = arrays.pop("ema", None)
  state = trainer.state_from_arrays(arrays)
  return state, meta["round"], meta.get("wall_time_s", 0.0), ema


def check_run(cfg: configs.TrainConfig, data: loaders.FederatedData) -> None:
  """Refuses a configuration that only the data can refute (ValueError)."""
  k = len(data.hospitals)
  for r, hospitals in cfg.dropout_schedule:
    bad = sorted(int(h) for h in hospitals if int(h) >= k)
    if bad:
      raise ValueError(
        f"dropout_schedule: round {r} names hospital(s) {bad}, but there are only {k} "
        f"(indices 0-{k - 1})"
      )
  if cfg.setting == "fscdp" and cfg.secure_aggregation != "none":
    cfg.secagg_config(k)  # refuses thresholds, colluders and graphs it cannot cover


def run(
  cfg: configs.TrainConfig,
  data: loaders.FederatedData,
  output_dir: str,
  *,
  hparams: dict | None = None,
  data_config: loaders.DataConfig | None = None,
  options: LoopOptions = LoopOptions(),
  log: Callable[[str], None] = print,
) -> dict:
  """Trains `cfg.setting` on `data`; returns the summary (also in summary.json).

  Nothing is written before the checks pass: a directory holding another run
  (without `options.resume` or `options.overwrite`), a dropout schedule naming
  hospitals that do not exist, or a budget that admits no round raise
  RunDirError, ValueError or BudgetError. Ctrl-C (SIGINT, main thread) ends
  the round under way, checkpoints it and raises Interrupted.
  """
  check_run(cfg, data)
  check_output_dir(output_dir, options)
  hparams = dict(hparams or {})
  if data_config is not None:
    hparams["data"] = dict(
      dataclasses.asdict(data_config), image_size=data_config.resolved_image_size
    )
  hparams.setdefault("num_train_examples", data.num_train)
  # The hospitals' shard files are scratch: rebuilt from the data on resume.
  with tempfile.TemporaryDirectory(prefix="dopamine_tff_") as scratch:
    return _run(cfg, data, output_dir, scratch, hparams, options, log)


def _first_round_cost(cfg, trainer, ledgers) -> float | None:
  """Epsilon of round 1 when the target budget admits it not; else None."""
  plan = trainer.plan(0)
  if not _over_budget(cfg, ledgers, plan):
    return None
  return max(ledgers[p].epsilon_if(step) for p, step in plan.steps.items())


def _run(cfg, data, output_dir, scratch, hparams, options, log) -> dict:
  trainer = settings.make_trainer(cfg, data, scratch)
  ledgers = {
    p: accounting.PrivacyLedger(cfg.delta, cfg.budget_accountant) for p in trainer.parties()
  }
  ckpt_dir = os.path.join(output_dir, "checkpoints")
  restored = _restore(trainer, ledgers, ckpt_dir, cfg, data) if options.resume else None
  if restored is None:
    cost = _first_round_cost(cfg, trainer, ledgers) if cfg.target_epsilon else None
    if cost is not None:
      raise BudgetError(
        f"--target_epsilon={cfg.target_epsilon:g} admits no round: the first round alone "
        f"costs epsilon {cost:.4g} at delta {cfg.delta:g}; raise the target or the noise, "
        "or lower the sampling rate"
      )
    # A fresh start replaces whatever a previous run left (checked in run()).
    remove_run_files(output_dir)
    state, start_round, wall_offset, ema = trainer.initial_state(), 0, 0.0, None
  else:
    state, start_round, wall_offset, ema = restored
  os.makedirs(output_dir, exist_ok=True)
  write_json(os.path.join(output_dir, "hparams.json"), hparams)
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
  metrics = _MetricsFile(os.path.join(output_dir, "metrics.csv"), start_round)
  writer = (
    tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))
    if options.tensorboard
    else None
  )
  evaluator = _Evaluator(cfg, data)
  ident = (fingerprint(cfg, data), run_identity(cfg, data))
  loop = _Loop(cfg, trainer, ledgers, evaluator, metrics, writer, log, wall_offset)
  loop.ema = ema
  try:
    with _StopOnSigint() as stop:
      loop.stop = stop
      state, rounds_run, stop_reason = loop.rounds(state, start_round, ckpt_dir, ident, options)
  finally:
    metrics.close()
    if writer is not None:
      writer.close()
  if (
    options.checkpoint_every and rounds_run > start_round and rounds_run % options.checkpoint_every
  ):
    loop.save(ckpt_dir, rounds_run, state, ident)  # so --rounds can be raised later
  summary = _finish(
    cfg, data, output_dir, trainer, ledgers, evaluator, state, rounds_run, stop_reason, loop
  )
  if options.audit:
    summary["audit"] = audit.membership_audit(
      evaluator.model,
      loop.model_weights(state),
      (evaluator.pooled.images, evaluator.pooled.labels),
      evaluator.test,
      seed=cfg.seed,
    )
    log(
      f"audit: attack AUC {summary['audit']['max_auc']:.3f}, advantage "
      f"{summary['audit']['max_advantage']:.3f}, empirical epsilon lower bound "
      f"{summary['audit']['epsilon_lower_bound']:.3f} (reported epsilon {summary['epsilon']})"
    )
    write_json(os.path.join(output_dir, "summary.json"), summary)
  return summary


def ema_update(ema, weights, decay: float, rounds_run: int):
  """One step of the released weights' moving average (post-processing).

  The first call (``ema`` None) starts it at ``weights``; after that the decay
  ramps up as min(decay, (1 + t) / (10 + t)) at round t.
  """
  if ema is None:
    return [np.array(w, np.float32) for w in weights]
  d = min(decay, (1 + rounds_run) / (10 + rounds_run))
  return [d * e + (1 - d) * np.asarray(w) for e, w in zip(ema, weights)]


class _StopOnSigint:
  """Turns the first SIGINT into a request to stop after the current round.

  A second SIGINT interrupts at once. Outside the main thread (where Python
  cannot install handlers) it does nothing.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
    return False


class _Loop:
  """The round loop (kept apart from setup and finishing for readability)."""

  def __init__(self, cfg, trainer, ledgers, evaluator, metrics, writer, log, wall_offset):
    self.cfg, self.trainer, self.ledgers = cfg, trainer, ledgers
    self.evaluator, self.metrics, self.writer, self.log = evaluator, metrics, writer, log
    self.start = time.monotonic() - wall_offset
    self.last_eval: dict = {}
    self.stop: _StopOnSigint | None = None
    self.ema: list | None = None  # EMA of the released weights (cfg.ema_decay > 0)
    self.ema_steps = 0

  def update_ema(self, state, rounds_run):
    """Averages the released weights: post-processing, no privacy cost."""
    if self.cfg.ema_decay > 0:
      weights = self.trainer.weights(state)
      self.ema = ema_update(self.ema, weights, self.cfg.ema_decay, rounds_run)

  def model_weights(self, state):
    """The weights evaluated and saved: the EMA when enabled, else the state's."""
    if self.cfg.ema_decay > 0 and self.ema is not None:
      return self.ema
    return self.trainer.weights(state)

  def wall(self) -> float:
    return time.monotonic() - self.start

  def rounds(self, state, start_round, ckpt_dir, ident, options):
    cfg, rounds_run, first = self.cfg, start_round, time.monotonic()
    for r in range(start_round, cfg.rounds):
      if self.stop is not None and self.stop.requested:
        if options.checkpoint_every and rounds_run > start_round:
          self.save(ckpt_dir, rounds_run, state, ident)
        raise Interrupted(rounds_run, bool(options.checkpoint_every))
      plan = self.trainer.plan(r)
      if _over_budget(cfg, self.ledgers, plan):
        reason = f"budget: round {r + 1} would exceed epsilon {cfg.target_epsilon}"
        self.log(f"stopping before round {r + 1}: {reason}")
        return state, rounds_run, reason
      t0 = time.monotonic()
      if plan.skipped:
        # Too few hospitals delivered: nothing is applied or released, so the
        # weights and the ledger stay as they were.
        self.log(f"round {r + 1} skipped: {len(plan.clients)} hospitals delivered")
        measurements = {}
      else:
        state, measurements = self.trainer.run(state, plan, r)
      if measurements.get("aborted"):
        # The protocol could not unmask: nothing was released, so the weights
        # and the ledger stay as they were.
        self.log(f"round {r + 1} skipped: {measurements['aborted']}")
        plan = dataclasses.replace(plan, steps={}, skipped=True)
      for party, step in plan.steps.items():
        self.ledgers[party].record(step)
      rounds_run = r + 1
      if not plan.skipped:
        self.update_ema(state, rounds_run)
      row = self._row(state, plan, measurements, rounds_run, time.monotonic() - t0)
      self.metrics.write(row)
      self._tensorboard(row)
      if options.checkpoint_every and rounds_run % options.checkpoint_every == 0:
        self.save(ckpt_dir, rounds_run, state, ident)
      if not math.isnan(row["test_accuracy"]):
        per_round = (time.monotonic() - first) / (rounds_run - start_round)
        self.log(
          f"round {rounds_run}/{cfg.rounds}"
          + (f" ({self.metrics.skipped} skipped)" if self.metrics.skipped else "")
          + f" epochs {row['epochs']:.2f} "
          f"test_acc {row['test_accuracy']:.4f} test_loss {row['test_loss']:.4f} "
          f"eps {row['epsilon']:.3f} ({row['round_time_s']:.2f} s/round, "
          f"ETA {per_round * (cfg.rounds - rounds_run):.0f} s)"
        )
    return state, rounds_run, "completed"

  def _row(self, state, plan, measurements, rounds_run, round_time):
    row = {
      "round": rounds_run,
      "epochs": self.trainer.epochs(rounds_run),
      "epsilon": _worst_epsilon(self.ledgers, self.cfg.private),
      "epsilon_rdp": float("nan"),
      "epsilon_pld": float("nan"),
      "num_clients": len(plan.clients),
      "skipped": int(plan.skipped),
      "secure_clipped": int(measurements.get("secure_clipped_count", 0)),
      "round_time_s": round_time,
      "wall_time_s": self.wall(),
      "train_loss": float("nan"),
      "test_accuracy": float("nan"),
      "test_loss": float("nan"),
    }
    evaluate = rounds_run % self.cfg.eval_every == 0 or rounds_run == self.cfg.rounds
    for kind in ("rdp", "pld"):
      # PLD costs ~0.2 s a call: every round only when it is the budget.
      if self.cfg.reports(kind) and (evaluate or kind == self.cfg.budget_accountant):
        row[f"epsilon_{kind}"] = _worst_epsilon(self.ledgers, self.cfg.private, kind)
    if evaluate:
      row.update(self.evaluator(self.model_weights(state)))
      self.last_eval = dict(row)
    return row

  def _tensorboard(self, row):
    if self.writer is None:
      return
    with self.writer.as_default():
      for key, value in row.items():
        if key != "round" and isinstance(value, int | float) and math.isfinite(value):
          tf.summary.scalar(key, value, step=row["round"])
    self.writer.flush()

  def save(self, ckpt_dir, rounds_run, state, ident):
    meta = {
      "fingerprint": ident[0],
      "identity": ident[1],
      "ledgers": {p: lg.to_json() for p, lg in self.ledgers.items()},
      "wall_time_s": self.wall(),
    }
    arrays = dict(self.trainer.state_arrays(state))
    if self.ema is not None:
      arrays["ema"] = self.ema
    checkpoint.save(ckpt_dir, rounds_run, arrays, meta)


def _finish(
  cfg, data, output_dir, trainer, ledgers, evaluator, state, rounds_run, stop_reason, loop
):
  weights = loop.model_weights(state)
  last = loop.last_eval
  if last.get("round") != rounds_run:
    last = dict(evaluator(weights, with_train=False), round=rounds_run)
  np.savez(os.path.join(output_dir, "final_weights.npz"), *weights)
  settings.dp_sgd.assign_weights(evaluator.model, weights)
  evaluator.model.save(os.path.join(output_dir, "model.keras"))
  epsilon = _worst_epsilon(ledgers, cfg.private)
  summary = {
    "setting": cfg.setting,
    "seed": cfg.seed,
    "privacy_unit": cfg.privacy_unit if cfg.private else None,
    "dataset": data.name,
    "rounds_run": rounds_run,
    # Of them, rounds that released nothing: aborted by the secure aggregation
    # (or an unencodable update), or too few hospitals delivered.
    "rounds_skipped": loop.metrics.skipped,
    "rounds_released": rounds_run - loop.metrics.skipped,
    "rounds_requested": cfg.rounds,
    "epochs": trainer.epochs(rounds_run),
    "stop_reason": stop_reason,
    "final_test_accuracy": last.get("test_accuracy"),
    "final_test_loss": last.get("test_loss"),
    "epsilon": epsilon if math.isfinite(epsilon) else None,
    **{
      f"epsilon_{kind}": _finite_or_none(_worst_epsilon(ledgers, cfg.private, kind))
      for kind in ("rdp", "pld")
      if cfg.reports(kind)
    },
    "delta": cfg.delta if cfg.private else None,
    "noise_randomness": cfg.randomness.description,
    "accountant": cfg.accountant,
    "target_epsilon": cfg.target_epsilon,
    "majority_class_accuracy": float(np.max(np.bincount(data.test.labels)) / len(data.test.labels)),
    "num_parameters": models.count_params(evaluator.model),
    "ledgers": {p: lg.to_json() for p, lg in ledgers.items()},
    "wall_time_s": loop.wall(),
  }
  overflow = getattr(trainer, "overflow_per_round", None)
  if overflow is not None and summary["epsilon"] is not None:
    # The released sums equal the accounted mechanism's post-processing except
    # when a sum wraps around (probability <= overflow per round); that adds
    # (1 + e^epsilon) * rounds * overflow to delta.
    extra = (1 + math.exp(min(summary["epsilon"], 700))) * rounds_run * overflow
    summary["secure_sum_overflow_per_round"] = overflow
    summary["delta_with_overflow"] = cfg.delta + extra
  if getattr(trainer, "secagg", None) is not None:
    summary["secure_aggregation"] = trainer.secagg.to_json()
  if settings.COLLUDERS in ledgers:  # epsilon against c = 0 and the assumed c
    summary["assumed_colluders"] = cfg.assumed_colluders
    summary["epsilon_no_collusion"] = _finite_or_none(ledgers[settings.ALL].epsilon())
    summary["epsilon_colluders"] = _finite_or_none(ledgers[settings.COLLUDERS].epsilon())
  if rounds_run and loop.metrics.skipped * 4 > rounds_run:
    summary["warning"] = (
      f"{loop.metrics.skipped} of {rounds_run} rounds released nothing (aborted or too few "
      "hospitals): check --dropout_prob, --secagg_unmask_dropout_prob and the SecAgg threshold"
    )
    loop.log(f"WARNING: {summary['warning']}")
  write_json(os.path.join(output_dir, "summary.json"), summary)
  return summary
