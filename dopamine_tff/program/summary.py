"""summary.json and the final model files of a run.

The privacy facts (epsilon per accountant, delta with the secure sum's
overflow, the collusion epsilons) come from accounting.privacy_summary; this
module adds what the run did and how well the released model does.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from dopamine_tff import accounting
from dopamine_tff import audit
from dopamine_tff import grading
from dopamine_tff import models
from dopamine_tff.program import durable
from dopamine_tff.program import run_dir


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What the loop did, for the summary."""

  rounds_run: int
  rounds_skipped: int  # rounds that released nothing (aborted, too few hospitals)
  stop_reason: str
  wall_time_s: float
  initial: dict = dataclasses.field(default_factory=dict)  # the starting weights' evaluation
  # Executor-service bytes to and from each TFF worker (this start of the run).
  worker_traffic: dict = dataclasses.field(default_factory=dict)


def summarize(cfg, data, trainer, parties: accounting.Parties, evaluator, last, facts) -> dict:
  """The summary dict: the run, the final evaluation `last`, the privacy facts."""
  test = data.test.labels
  return {
    "setting": cfg.setting,
    "cdp_impl": cfg.cdp_impl if cfg.setting == "cdp" else None,
    "seed": cfg.seed,
    "privacy_unit": cfg.privacy_unit if cfg.private else None,
    "dataset": data.name,
    "rounds_run": facts.rounds_run,
    "rounds_skipped": facts.rounds_skipped,
    "rounds_released": facts.rounds_run - facts.rounds_skipped,
    "rounds_requested": cfg.rounds,
    "epochs": trainer.epochs(facts.rounds_run),
    "stop_reason": facts.stop_reason,
    "final_test_accuracy": last.get("test_accuracy"),
    "final_test_loss": last.get("test_loss"),
    # The DR grading metrics (dopamine_tff/grading.py); null where they do not apply.
    **{f"final_{k}": _finite_or_none(last.get(k)) for k in grading.SCALARS},
    "final_recall": [_finite_or_none(r) for r in last.get("recall", [])],
    "final_confusion_matrix": last.get("confusion_matrix"),
    # Round 0: does private training beat the starting (e.g. public) weights?
    "initial_test_accuracy": facts.initial.get("test_accuracy"),
    "init_weights": trainer.provenance.to_json(),
    "trainable": models.trainable_summary(
      cfg.model, data.image_shape, data.num_classes, cfg.trainable
    ),
    **accounting.privacy_summary(
      parties,
      delta=cfg.delta,
      rounds_run=facts.rounds_run,
      reported_kinds=[k for k in ("rdp", "pld") if cfg.reports(k)],
      overflow_per_round=trainer.overflow_per_round,
      assumed_colluders=cfg.assumed_colluders,
    ),
    "noise_randomness": cfg.randomness.description,
    "accountant": cfg.accountant,
    "target_epsilon": cfg.target_epsilon,
    "majority_class_accuracy": float(np.max(np.bincount(test)) / len(test)),
    "num_parameters": models.count_params(evaluator.model),
    "wall_time_s": facts.wall_time_s,
    **({"secure_aggregation": trainer.secagg.to_json()} if trainer.secagg is not None else {}),
    **({"worker_traffic": facts.worker_traffic} if facts.worker_traffic else {}),
  }


def _finite_or_none(x):
  return float(x) if x is not None and np.isfinite(x) else None


def skipped_warning(facts: RunFacts) -> str | None:
  """A warning when more than a quarter of the rounds released nothing."""
  if facts.rounds_run and facts.rounds_skipped * 4 > facts.rounds_run:
    return (
      f"{facts.rounds_skipped} of {facts.rounds_run} rounds released nothing (aborted or too "
      "few hospitals): check --dropout_prob, --secagg_unmask_dropout_prob and the SecAgg "
      "threshold"
    )
  return None


def finish(
  output_dir, cfg, data, trainer, parties, evaluator, weights, last_eval, facts, log
) -> dict:
  """Writes final_weights.npz, model.keras and summary.json; returns the summary.

  `last_eval` is the last evaluation row; the final weights are evaluated
  (test set only) unless it is of the last round.
  """
  last = last_eval
  if last.get("round") != facts.rounds_run:
    last = dict(evaluator(weights, with_train=False), round=facts.rounds_run)
  final = os.path.join(output_dir, "final_weights.npz")
  with durable.writing(final, "final weights", cleanup=final + ".tmp.npz"):
    np.savez(final + ".tmp.npz", *weights)
    os.replace(final + ".tmp.npz", final)
  model = os.path.join(output_dir, "model.keras")
  with durable.writing(model, "final model"):
    evaluator.save_model(weights, model)
  summary = summarize(cfg, data, trainer, parties, evaluator, last, facts)
  warning = skipped_warning(facts)
  if warning:
    summary["warning"] = warning
    log(f"WARNING: {warning}")
  run_dir.write_json(os.path.join(output_dir, "summary.json"), summary)
  return summary


def origin(trainer) -> str:
  """Where the starting weights came from, for the log."""
  p = trainer.provenance
  if p.path is None:
    return "random"
  return f"{p.path}, sha256 {p.sha256[:12]}" + (
    ", head re-initialised" if p.head_reinitialised else ""
  )


def audit_model(cfg, evaluator, weights, summary, log) -> dict:
  """Membership-inference attacks on the released model (dopamine_tff/audit.py)."""
  result = audit.membership_audit(
    evaluator.model,
    weights,
    (evaluator.pooled.images, evaluator.pooled.labels),
    evaluator.test,
    seed=cfg.seed,
  )
  log(
    f"audit: attack AUC {result['max_auc']:.3f}, advantage "
    f"{result['max_advantage']:.3f}, empirical epsilon lower bound "
    f"{result['epsilon_lower_bound']:.3f} (reported epsilon {summary['epsilon']})"
  )
  return result
