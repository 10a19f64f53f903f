"""Pure functions from run directories to the results table (CSV and Markdown).

A results root holds ``<setting>/seed_<n>/`` run directories written by the
training loop (metrics.csv, summary.json). ``collect`` reads them, grouped by
setting; ``table_rows`` gives each setting's mean, standard deviation (ddof=1)
and Student-t 95 % interval over seeds; ``markdown`` and ``write_table`` print
them. The figures drawn from the same runs are in dopamine_tff/plotting.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os

import numpy as np

ORDER = ("c", "cdp", "f", "fpdp", "fscdp")
LABELS = {
  "c": "C (centralised)",
  "cdp": "CDP (central DP-SGD)",
  "f": "F (FedAvg)",
  "fpdp": "FPDP (parallel local DP)",
  "fscdp": "FSCDP (Dopamine)",
}


def _float(v: str) -> float:
  if v == "inf":
    return math.inf
  return float(v) if v not in ("", None) else math.nan


def read_run(run_dir: str) -> dict:
  """{'summary': dict, 'metrics': {column: np.array}} of one run directory.

  Raises:
    ValueError: when summary.json or metrics.csv is missing or malformed.
  """
  try:
    with open(os.path.join(run_dir, "summary.json")) as f:
      summary = json.load(f)
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read run {run_dir}: {e}") from None
  columns = {k: np.array([_float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
  start = summary.get("initial_test_accuracy")
  if start is not None and columns and columns["round"][0] > 0:  # round 0: the starting weights
    zero = {k: math.nan for k in columns}
    zero.update(round=0.0, epochs=0.0, epsilon=0.0, test_accuracy=float(start))
    columns = {k: np.concatenate([[zero[k]], v]) for k, v in columns.items()}
  hparams = {}
  path = os.path.join(run_dir, "hparams.json")
  with contextlib.suppress(OSError, json.JSONDecodeError), open(path) as f:
    hparams = json.load(f)
  return {"summary": summary, "metrics": columns, "hparams": hparams}


def default_title(runs: dict[str, list[dict]]) -> str:
  """'<preset> preset, <dataset>' as reproduce_paper titles its figures, from the runs."""
  for group in runs.values():
    for run in group:
      h = run.get("hparams") or {}
      if h.get("preset"):
        return f"{h['preset']} preset, {(h.get('data') or {}).get('dataset', run['summary'].get('dataset'))}"
  return "dopamine_tff"


def collect(root: str) -> dict[str, list[dict]]:
  """Completed runs under root, grouped by setting (in the paper's order).

  ``public/`` holds a pretrained preset's public weights and their training
  run (dopamine_tff/pretraining.py): not one of the compared runs.
  """
  out: dict[str, list[dict]] = {}
  for setting in sorted(os.listdir(root), key=lambda s: ORDER.index(s) if s in ORDER else 99):
    sdir = os.path.join(root, setting)
    if not os.path.isdir(sdir) or setting == "public":
      continue
    runs = [
      read_run(os.path.join(sdir, d))
      for d in sorted(os.listdir(sdir))
      if os.path.isfile(os.path.join(sdir, d, "summary.json"))
    ]
    if runs:
      out[setting] = runs
  return out


def _mean_std(values) -> tuple[float, float]:
  arr = np.array([v for v in values if v is not None], dtype=np.float64)
  if arr.size == 0:
    return math.nan, math.nan
  return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def ci95_halfwidth(std: float, n: int) -> float:
  """Half-width of the two-sided 95 % Student-t interval of a mean of n values.

  NaN below 3 values: with 2 the t quantile is 12.7 and the interval (e.g.
  [-152, 211] % on the smoke preset, issue 22) says nothing; the table shows "-".
  """
  if n < 3 or math.isnan(std):
    return math.nan
  from scipy import stats

  return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def table_rows(runs: dict[str, list[dict]]) -> list[dict]:
  """One row per setting: mean and std over seeds."""
  rows = []
  for setting, group in runs.items():
    acc = _mean_std([r["summary"]["final_test_accuracy"] for r in group])
    eps = _mean_std([r["summary"]["epsilon"] for r in group])
    rows.append(
      {
        "setting": setting,
        "runs": len(group),
        "accuracy_mean": acc[0],
        "accuracy_std": acc[1],
        "accuracy_ci95": ci95_halfwidth(acc[1], len(group)),
        "majority_class": _mean_std([r["summary"].get("majority_class_accuracy") for r in group])[
          0
        ],
        "epsilon_mean": eps[0],
        "epsilon_std": eps[1],
        "delta": group[0]["summary"]["delta"],
        "epochs": float(np.mean([r["summary"]["epochs"] for r in group])),
        "rounds": float(np.mean([r["summary"]["rounds_run"] for r in group])),
        "wall_time_s": float(np.mean([r["summary"]["wall_time_s"] for r in group])),
        "audit_auc": _mean_std([(r["summary"].get("audit") or {}).get("max_auc") for r in group])[
          0
        ],
        "audit_epsilon_lb": _mean_std(
          [(r["summary"].get("audit") or {}).get("epsilon_lower_bound") for r in group]
        )[0],
        # Round 0: the starting weights' accuracy; "file" when they were loaded.
        "initial_accuracy": _mean_std([r["summary"].get("initial_test_accuracy") for r in group])[
          0
        ],
        "init": ",".join(
          sorted({(r["summary"].get("init_weights") or {}).get("source", "random") for r in group})
        ),
      }
    )
  return rows


def markdown(rows: list[dict]) -> str:
  audited = any(not math.isnan(r["audit_auc"]) for r in rows)
  head = (
    "| setting | runs | test accuracy (mean ± std) | 95 % interval | epsilon (mean ± std) "
    "| delta | epochs | rounds | time per run |"
  )
  majority = [
    r["majority_class"] for r in rows if not math.isnan(r.get("majority_class", math.nan))
  ]
  lines = [
    head + (" MIA AUC | empirical epsilon LB |" if audited else ""),
    "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if audited else ""),
  ]
  for r in rows:
    eps = (
      "not private"
      if math.isnan(r["epsilon_mean"])
      else f"{r['epsilon_mean']:.3f} ± {r['epsilon_std']:.3f}"
    )
    ci = r.get("accuracy_ci95", math.nan)
    lo, hi = max(0.0, r["accuracy_mean"] - ci), min(1.0, r["accuracy_mean"] + ci)
    interval = "-" if math.isnan(ci) else f"[{100 * lo:.2f}, {100 * hi:.2f}] %"
    lines.append(
      f"| {LABELS.get(r['setting'], r['setting'])} | {r['runs']} | "
      f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} % | {interval} | {eps} | "
      f"{r['delta'] if r['delta'] is not None else '-'} | {r['epochs']:.2f} | {r['rounds']:.0f} | "
      f"{r['wall_time_s']:.0f} s |"
      + (f" {r['audit_auc']:.3f} | {r['audit_epsilon_lb']:.3f} |" if audited else "")
    )
  n = max((r["runs"] for r in rows), default=0)
  lines.append("")
  lines.append(
    f"Mean ± standard deviation (ddof=1) over the runs of each setting (up to n={n} seeds); "
    "the 95 % interval is the Student-t interval of the mean, clamped to [0, 100] % "
    "(shown from 3 runs on)."
    + (
      f" Majority-class rate of the test set: {100 * float(np.mean(majority)):.2f} %."
      if majority
      else ""
    )
  )
  start = [r["initial_accuracy"] for r in rows if r.get("init") == "file"]
  start = [a for a in start if not math.isnan(a)]
  if start:
    lines.append(
      f"Every run starts from pretrained weights loaded from a file (--init_weights); "
      f"those weights alone score {100 * float(np.mean(start)):.2f} % on the test set."
    )
  return "\n".join(lines)


def write_table(rows: list[dict], csv_path: str, md_path: str, extra: str = "") -> None:
  """results.csv and results.md (with `extra` Markdown after the table, e.g. the
  grading table of dopamine_tff/grading_report.py)."""
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["setting"])
    writer.writeheader()
    writer.writerows(rows)
  with open(md_path, "w") as f:
    f.write(markdown(rows) + (f"\n\n{extra}" if extra else "") + "\n")
