"""Resuming a killed run: what a checkpoint belongs to, restoring it, Ctrl-C.

A checkpoint records a fingerprint of every configuration field that changes
past rounds; resume refuses a mismatch and names the differing flags. A
resumed run draws fresh secret randomness (nothing is replayed); only the
insecure seeded mode continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import init_weights
from dopamine_tff.data import loaders
from dopamine_tff.program import checkpoint
from dopamine_tff.program import run_dir

# Fields that may change when a run is resumed: they do not alter past rounds.
RESUMABLE_CHANGES = ("rounds", "target_epsilon", "eval_every")


class Interrupted(Exception):  # noqa: N818 (a stop, not an error)
  """Ctrl-C or SIGTERM: the run stopped after a completed, checkpointed round."""

  def __init__(self, rounds_run: int, checkpointed: bool, signum: int = signal.SIGINT):
    self.rounds_run, self.checkpointed, self.signum = rounds_run, checkpointed, int(signum)
    by = "" if self.signum == signal.SIGINT else f" by {signal.Signals(self.signum).name}"
    super().__init__(
      f"interrupted{by} after round {rounds_run}; rerun with --resume to continue"
      if checkpointed
      else f"interrupted{by} after round {rounds_run} (no checkpoint: --checkpoint_every=0)"
    )


def run_identity(cfg: configs.TrainConfig, data: loaders.FederatedData) -> dict:
  """What a checkpoint belongs to: every field that changes past rounds.

  With a learning-rate schedule the round count shapes every step, so it must
  not change on resume. Starting weights count by their SHA-256.
  """
  free = [k for k in RESUMABLE_CHANGES if not (k == "rounds" and cfg.lr_schedule != "constant")]
  ident = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}
  if cfg.init_weights:  # the weights' content, not where the file lies
    ident["init_weights"] = "sha256:" + init_weights.sha256_of(cfg.init_weights)
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


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint's program state, ready to continue."""

  state: object
  round: int
  wall_time_s: float
  ema: list | None
  skipped: int = 0  # rounds before `round` that released nothing (from metrics.csv)


def _check_identity(meta: dict, ckpt_dir: str, cfg, data) -> None:
  if meta.get("fingerprint") == fingerprint(cfg, data):
    return
  saved = meta.get("identity")
  what = (
    f"these settings differ: {_differences(saved, run_identity(cfg, data))}"
    if saved is not None
    else f"fingerprint {meta.get('fingerprint')} (a checkpoint of an older version)"
  )
  raise run_dir.RunDirError(
    f"cannot resume: the checkpoint in {ckpt_dir} belongs to another configuration; "
    f"{what}. Only {', '.join('--' + k for k in RESUMABLE_CHANGES)} may change on "
    "resume; use --overwrite or a new --output_dir"
  )


def restore(
  trainer, parties: accounting.Parties, ckpt_dir: str, cfg, data, log=print
) -> Restored | None:
  """The newest intact checkpoint's state (ledgers restored into `parties`); None if none.

  A damaged newer checkpoint is named in the log and skipped; the ledgers
  then come from the newest one whose meta.json is readable, so the rounds it
  charged stay charged when they are run again (the ledger never under-counts).
  """
  try:
    found = checkpoint.load_latest(ckpt_dir)
  except checkpoint.Damaged as e:
    raise run_dir.RunDirError(f"cannot resume: {e}; start afresh with --overwrite") from None
  if found is None:
    return None
  arrays, meta = found.arrays, found.meta
  for line in found.damaged:
    log(f"{line}; resuming from the newest intact one, round {meta['round']}")
  _check_identity(meta, ckpt_dir, cfg, data)
  if meta["round"] > cfg.rounds:
    raise run_dir.RunDirError(
      f"cannot resume: the checkpoint in {ckpt_dir} is at round {meta['round']}, "
      f"beyond --rounds={cfg.rounds}; raise --rounds"
    )
  try:
    parties.restore(meta["ledgers"])
    if found.newest_ledgers is not None:
      parties.restore(found.newest_ledgers)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise run_dir.RunDirError(
      f"cannot resume: the privacy ledgers in {ckpt_dir} are malformed ({e!r}); the spent "
      "budget is unknown, so the run cannot continue: start afresh with --overwrite"
    ) from None
    log(
      f"the privacy ledger keeps the rounds up to {found.newest_round} that the damaged "
      f"checkpoint charged; rerunning rounds {meta['round'] + 1}-{found.newest_round} charges "
      "them again"
    )
  ema = arrays.pop("ema", None)
  state = trainer.state_from_arrays(arrays)
  return Restored(state, meta["round"], meta.get("wall_time_s", 0.0), ema)


class Checkpointer:
  """Saves the program state, the ledgers and the EMA with the run's identity."""

  def __init__(self, ckpt_dir: str, every: int, cfg, data, trainer, parties):
    self.ckpt_dir, self.every = ckpt_dir, every
    self.trainer, self.parties = trainer, parties
    self.ident = (fingerprint(cfg, data), run_identity(cfg, data))

  def save(self, rounds_run: int, state, ema, wall_time_s: float) -> None:
    meta = {
      "fingerprint": self.ident[0],
      "identity": self.ident[1],
      "ledgers": self.parties.to_json(),
      "wall_time_s": wall_time_s,
    }
    arrays = dict(self.trainer.state_arrays(state))
    if ema is not None:
      arrays["ema"] = ema
    checkpoint.save(self.ckpt_dir, rounds_run, arrays, meta)


class StopOnSigint:
  """Turns the first SIGINT or SIGTERM into a request to stop after the current round.

  A second one acts at once (KeyboardInterrupt, or the default SIGTERM). Outside
  the main thread (where Python cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = False
    self.signum = signal.SIGINT
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested, self.signum = True, signum
    for s in self.SIGNALS:  # the second signal acts at once
      signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


class BudgetError(ValueError):
  """--target_epsilon admits not even the first round."""


def first_round_cost(cfg, trainer, parties) -> float | None:
  """Epsilon of round 1 when the target budget admits it not; else None."""
  plan = trainer.plan(0)
  if not parties.would_exceed(plan.steps, cfg.target_epsilon):
    return None
  return parties.epsilon_if(plan.steps)


def start(cfg, data, output_dir, trainer, parties, options, log) -> Restored:
  """The restored checkpoint, or a fresh start (a previous run's files removed).

  Raises:
    BudgetError: a fresh start whose target budget admits not even round 1.
  """
  ckpt_dir = os.path.join(output_dir, "checkpoints")
  restored = restore(trainer, parties, ckpt_dir, cfg, data, log) if options.resume else None
  if restored is not None:
    return restored
  cost = first_round_cost(cfg, trainer, parties) if cfg.target_epsilon else None
  if cost is not None:
    raise BudgetError(
      f"--target_epsilon={cfg.target_epsilon:g} admits no round: the first round alone "
      f"costs epsilon {cost:.4g} at delta {cfg.delta:g}; raise the target or the noise, "
      "or lower the sampling rate"
    )
  # A fresh start replaces whatever a previous run left (checked in run()).
  run_dir.remove_run_files(output_dir)
  return Restored(trainer.initial_state(), 0, 0.0, None)
