"""Results tables and figures of the DR grading metrics over seeds.

From the runs results_tables.collect gathers: per setting, quadratic kappa,
referable-DR AUC, sensitivity and specificity (argmax and the cross-fitted
90 %-sensitivity point) and balanced accuracy as mean ± std (ddof=1) with the
95 % Student-t interval, and recall per grade. The figure of per-grade recall
per setting, with the seed spread, shows DP's disparate impact on the rare
grades in one picture (Bagdasaryan et al., NeurIPS 2019).
"""

from __future__ import annotations

import math

import numpy as np

from dopamine_tff import grading
from dopamine_tff import plotting
from dopamine_tff import results_tables

GRADES = ("0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative")
COLUMNS = (
  ("kappa", "kappa"),
  ("referable_auc", "referable AUC"),
  ("referable_sensitivity", "sens. (argmax)"),
  ("referable_specificity", "spec. (argmax)"),
  ("referable_specificity_at90", "spec. at 90 % sens."),
  ("balanced_accuracy", "balanced accuracy"),
)


def _values(group, key):
  return [r["summary"].get(f"final_{key}") for r in group]


def _stats(values) -> dict:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
  arr = np.array(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {
    "mean": float(arr.mean()),
    "std": std,
    "ci95": results_tables.ci95_halfwidth(std, arr.size),
    "n": int(arr.size),
  }


def table_rows(runs: dict[str, list[dict]]) -> list[dict]:
  """Per setting: every grading scalar's stats and the per-class recall stats."""
  rows = []
  for setting, group in runs.items():
    row = {"setting": setting, "runs": len(group)}
    for key in grading.SCALARS:
      row[key] = _stats(_values(group, key))
    recalls = [r["summary"].get("final_recall") or [] for r in group]
    classes = max((len(r) for r in recalls), default=0)
    row["recall"] = [
      _stats([r[c] if c < len(r) else None for r in recalls]) for c in range(classes)
    ]
    rows.append(row)
  return rows


def _cell(s: dict, scale: float = 1.0) -> str:
  if s["n"] == 0:
    return "-"
  text = f"{scale * s['mean']:.3f} ± {scale * s['std']:.3f}"
  if not math.isnan(s["ci95"]):
    text += f" [{scale * (s['mean'] - s['ci95']):.3f}, {scale * (s['mean'] + s['ci95']):.3f}]"
  return text


def has_grading(rows) -> bool:
  return any(r["balanced_accuracy"]["n"] for r in rows)


def markdown_of(runs: dict[str, list[dict]]) -> str:
  """The grading tables of `runs`, or "" when no run measured them."""
  rows = table_rows(runs)
  return markdown(rows) if has_grading(rows) else ""


def markdown(rows: list[dict]) -> str:
  """The grading table (DR data) or balanced accuracy and recall (other data)."""
  dr = any(r["kappa"]["n"] for r in rows)
  columns = COLUMNS if dr else COLUMNS[-1:]
  lines = [
    "| setting | " + " | ".join(label for _, label in columns) + " |",
    "|---|" + "---|" * len(columns),
  ]
  for r in rows:
    label = plotting.LABELS.get(r["setting"], r["setting"])
    lines.append(f"| {label} | " + " | ".join(_cell(r[k]) for k, _ in columns) + " |")
  classes = max((len(r["recall"]) for r in rows), default=0)
  names = GRADES if dr and classes == 5 else tuple(str(c) for c in range(classes))
  lines += [
    "",
    "Recall per " + ("grade" if dr else "class") + " (mean ± std over seeds):",
    "",
    "| setting | " + " | ".join(names) + " |",
    "|---|" + "---|" * classes,
  ]
  for r in rows:
    label = plotting.LABELS.get(r["setting"], r["setting"])
    cells = [
      "-" if s["n"] == 0 else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} %" for s in r["recall"]
    ]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "Mean ± std (ddof=1) over seeds, [95 % Student-t interval] from 3 seeds on. "
    + (
      "Referable DR: grade >= 2; sensitivity and specificity at the argmax grade, and at the "
      "threshold on the softmax mass of grades 2-4 that gives 90 % sensitivity, chosen on one "
      "half of the test set and applied to the other (dopamine_tff/grading.py)."
      if dr
      else ""
    ),
  ]
  return "\n".join(lines)


def recall_figure(runs: dict[str, list[dict]], title: str = ""):
  """Per-grade recall per setting, bars of the mean with the seed std as error bars."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = table_rows(runs)
  classes = max((len(r["recall"]) for r in rows), default=0)
  fig, ax = plt.subplots(figsize=(7.0, 4.2))
  width = 0.8 / max(len(rows), 1)
  for i, r in enumerate(rows):
    colour, *_ = plotting.STYLES.get(r["setting"], ("#444444",))
    means = [s["mean"] for s in r["recall"]]
    stds = [s["std"] for s in r["recall"]]
    x = np.arange(classes) + (i - (len(rows) - 1) / 2) * width
    label = f"{plotting.LABELS.get(r['setting'], r['setting'])} (n={r['runs']})"
    ax.bar(x, means, width, yerr=stds, color=colour, label=label, capsize=2)
  dr = classes == 5 and any(r["kappa"]["n"] for r in rows)
  ax.set_xticks(np.arange(classes), GRADES if dr else [str(c) for c in range(classes)])
  ax.set_ylabel("recall (test set)")
  ax.set_ylim(0, 1.05)
  ax.set_title(title or "recall per grade", fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
  return fig


def draw(runs: dict[str, list[dict]], out_dir: str, title: str = "") -> list[str]:
  """The per-grade recall figure as PNG and PDF (nothing without grading metrics)."""
  if not has_grading(table_rows(runs)):
    return []
  return plotting.save(recall_figure(runs, title), out_dir, "recall_per_grade")
