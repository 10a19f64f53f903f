"""Pure functions from run directories to the results table and Figure 1.

A results root holds ``<setting>/seed_<n>/`` run directories written by the
training loop (metrics.csv, summary.json). The figures are the paper's
Figure 1 panels: test accuracy against epochs, epsilon against epochs (private
settings), and test accuracy against epsilon.
"""

from __future__ import annotations

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
  return {"summary": summary, "metrics": columns}


def collect(root: str) -> dict[str, list[dict]]:
  """Completed runs under root, grouped by setting (in the paper's order)."""
  out: dict[str, list[dict]] = {}
  for setting in sorted(os.listdir(root), key=lambda s: ORDER.index(s) if s in ORDER else 99):
    sdir = os.path.join(root, setting)
    if not os.path.isdir(sdir):
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
      }
    )
  return rows


def markdown(rows: list[dict]) -> str:
  audited = any(not math.isnan(r["audit_auc"]) for r in rows)
  head = "| setting | runs | test accuracy (mean ± std) | epsilon (mean ± std) | delta | epochs | rounds | time per run |"
  lines = [
    head + (" MIA AUC | empirical epsilon LB |" if audited else ""),
    "|---|---|---|---|---|---|---|---|" + ("---|---|" if audited else ""),
  ]
  for r in rows:
    eps = (
      "not private"
      if math.isnan(r["epsilon_mean"])
      else f"{r['epsilon_mean']:.3f} ± {r['epsilon_std']:.3f}"
    )
    lines.append(
      f"| {LABELS.get(r['setting'], r['setting'])} | {r['runs']} | "
      f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} % | {eps} | "
      f"{r['delta'] if r['delta'] is not None else '-'} | {r['epochs']:.2f} | {r['rounds']:.0f} | "
      f"{r['wall_time_s']:.0f} s |"
      + (f" {r['audit_auc']:.3f} | {r['audit_epsilon_lb']:.3f} |" if audited else "")
    )
  return "\n".join(lines)


def write_table(rows: list[dict], csv_path: str, md_path: str) -> None:
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["setting"])
    writer.writeheader()
    writer.writerows(rows)
  with open(md_path, "w") as f:
    f.write(markdown(rows) + "\n")


def _curves(group: list[dict], x_key: str, y_key: str):
  """Mean and std of y over seeds at the x values where y was evaluated."""
  series = []
  for run in group:
    m = run["metrics"]
    ok = np.isfinite(m[y_key]) & np.isfinite(m[x_key]) if y_key in m else np.array([], bool)
    series.append((m[x_key][ok], m[y_key][ok]))
  n = min((len(x) for x, _ in series), default=0)
  if n == 0:
    return None
  x = np.mean([s[0][:n] for s in series], axis=0)
  ys = np.array([s[1][:n] for s in series])
  return x, ys.mean(axis=0), ys.std(axis=0)


def draw_figures(runs: dict[str, list[dict]], out_dir: str, title: str = "") -> list[str]:
  """Draws the three Figure-1 panels as PNGs; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [
    ("accuracy_vs_epochs.png", "epochs", "test_accuracy", "epochs", "test accuracy", False),
    ("epsilon_vs_epochs.png", "epochs", "epsilon", "epochs", "epsilon", True),
    ("accuracy_vs_epsilon.png", "epsilon", "test_accuracy", "epsilon", "test accuracy", True),
  ]
  paths = []
  for name, x_key, y_key, x_label, y_label, private_only in panels:
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting, group in runs.items():
      if private_only and group[0]["summary"]["epsilon"] is None:
        continue
      curve = _curves(group, x_key, y_key)
      if curve is None:
        continue
      x, mean, std = curve
      ax.plot(x, mean, label=LABELS.get(setting, setting))
      ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths
