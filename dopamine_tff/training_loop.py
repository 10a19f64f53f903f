"""Runs rounds of a setting: budget check, round, ledger, evaluation, files.

Writes to the output directory, as each round ends:
* hparams.json: every hyper-parameter of the run (written first);
* metrics.csv: one row per round (flushed every round, so a killed run keeps
  its rows);
* summary.json: final accuracy, epsilon, delta, rounds run, why it stopped;
* model.keras and final_weights.npz: the final global model.

Algorithm 1, lines 17-19: before each round we ask the ledger what epsilon
would be after it; if that exceeds the target, we stop and keep the weights of
the previous round.
"""

from __future__ import annotations

from collections.abc import Callable
import csv
import json
import math
import os
import time

import numpy as np

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import models
from dopamine_tff import settings
from dopamine_tff.data import loaders

METRIC_FIELDS = (
  "round",
  "epochs",
  "train_loss",
  "test_accuracy",
  "test_loss",
  "epsilon",
  "num_clients",
  "secure_clipped",
  "round_time_s",
  "wall_time_s",
)
TRAIN_EVAL_EXAMPLES = 2000


def _fmt(v):
  if isinstance(v, float):
    return "inf" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.6g}")
  return v


def _worst_epsilon(ledgers: dict, private: bool) -> float:
  if not private:
    return math.inf
  if not ledgers:
    return 0.0
  return max(ledger.epsilon() for ledger in ledgers.values())


def _over_budget(cfg, ledgers, plan) -> bool:
  if cfg.target_epsilon is None:
    return False
  return any(
    ledgers[party].epsilon_if(step) > cfg.target_epsilon for party, step in plan.steps.items()
  )


def write_json(path: str, blob: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(blob, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def run(
  cfg: configs.TrainConfig,
  data: loaders.FederatedData,
  output_dir: str,
  *,
  hparams: dict | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Trains `cfg.setting` on `data`; returns the summary (also in summary.json)."""
  os.makedirs(output_dir, exist_ok=True)
  write_json(os.path.join(output_dir, "hparams.json"), hparams or {})
  start = time.monotonic()
  trainer = settings.make_trainer(cfg, data, output_dir)
  log(trainer.describe())
  ledgers = {p: accounting.PrivacyLedger(cfg.delta, cfg.accountant) for p in trainer.parties()}
  eval_model = models.build(cfg.model, data.image_shape, data.num_classes)
  pooled = data.pooled()
  sub = np.random.default_rng(cfg.seed).permutation(len(pooled))[:TRAIN_EVAL_EXAMPLES]
  train_x, train_y = pooled.images[sub], pooled.labels[sub]
  state = trainer.initial_state()
  stop_reason, rounds_run, last = "completed", 0, {}
  with open(os.path.join(output_dir, "metrics.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    for r in range(cfg.rounds):
      plan = trainer.plan(r)
      if _over_budget(cfg, ledgers, plan):
        stop_reason = f"budget: round {r + 1} would exceed epsilon {cfg.target_epsilon}"
        log(f"stopping before round {r + 1}: {stop_reason}")
        break
      t0 = time.monotonic()
      state, measurements = trainer.run(state, plan, r)
      round_time = time.monotonic() - t0
      for party, step in plan.steps.items():
        ledgers[party].record(step)
      rounds_run = r + 1
      row = {
        "round": rounds_run,
        "epochs": trainer.epochs(rounds_run),
        "epsilon": _worst_epsilon(ledgers, cfg.private),
        "num_clients": len(plan.clients),
        "secure_clipped": int(measurements.get("secure_upper_clipped_count", 0))
        + int(measurements.get("secure_lower_clipped_count", 0)),
        "round_time_s": round_time,
        "wall_time_s": time.monotonic() - start,
        "train_loss": float("nan"),
        "test_accuracy": float("nan"),
        "test_loss": float("nan"),
      }
      if rounds_run % cfg.eval_every == 0 or rounds_run == cfg.rounds:
        weights = trainer.weights(state)
        row["train_loss"], _ = settings.evaluate(eval_model, weights, train_x, train_y)
        row["test_loss"], row["test_accuracy"] = settings.evaluate(
          eval_model, weights, data.test.images, data.test.labels
        )
        last = row
        eta = (time.monotonic() - start) / rounds_run * (cfg.rounds - rounds_run)
        log(
          f"round {rounds_run}/{cfg.rounds} epochs {row['epochs']:.2f} "
          f"test_acc {row['test_accuracy']:.4f} test_loss {row['test_loss']:.4f} "
          f"eps {row['epsilon']:.3f} ({round_time:.2f} s/round, ETA {eta:.0f} s)"
        )
      writer.writerow({k: _fmt(v) for k, v in row.items()})
      f.flush()
  weights = trainer.weights(state)
  if rounds_run and last.get("round") != rounds_run:
    last = dict(last, round=rounds_run)
    last["test_loss"], last["test_accuracy"] = settings.evaluate(
      eval_model, weights, data.test.images, data.test.labels
    )
  elif not rounds_run:
    last["test_loss"], last["test_accuracy"] = settings.evaluate(
      eval_model, weights, data.test.images, data.test.labels
    )
  np.savez(os.path.join(output_dir, "final_weights.npz"), *weights)
  settings.dp_sgd.assign_weights(eval_model, weights)
  eval_model.save(os.path.join(output_dir, "model.keras"))
  epsilon = _worst_epsilon(ledgers, cfg.private)
  summary = {
    "setting": cfg.setting,
    "dataset": data.name,
    "rounds_run": rounds_run,
    "rounds_requested": cfg.rounds,
    "epochs": trainer.epochs(rounds_run),
    "stop_reason": stop_reason,
    "final_test_accuracy": last.get("test_accuracy"),
    "final_test_loss": last.get("test_loss"),
    "epsilon": epsilon if math.isfinite(epsilon) else None,
    "delta": cfg.delta if cfg.private else None,
    "accountant": cfg.accountant,
    "target_epsilon": cfg.target_epsilon,
    "majority_class_accuracy": float(np.max(np.bincount(data.test.labels)) / len(data.test.labels)),
    "num_parameters": models.count_params(eval_model),
    "ledgers": {p: lg.to_json() for p, lg in ledgers.items()},
    "wall_time_s": time.monotonic() - start,
  }
  write_json(os.path.join(output_dir, "summary.json"), summary)
  return summary
