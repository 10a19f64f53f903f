"""Prints a Markdown results table from run_experiment output directories.

  python -m experiments.summarize runs/digits/*
  python -m experiments.summarize runs/reproduce/cpu/*/seed_*

A run is labelled by its directory name, or setting/seed_<n> for the
<setting>/seed_<n> layout of reproduce_paper. A directory without a finished
summary.json is skipped with one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app

from experiments import cli_lib

HEADER = (
  "| run | setting | test accuracy | balanced accuracy | kappa | referable AUC | "
  "epsilon (delta) | rounds | epochs | stopped | wall time |"
)


def _metric(s: dict, key: str) -> str:
  """A grading metric of summary.json ('-' where it does not apply or predates it)."""
  value = s.get(f"final_{key}")
  return "-" if value is None else f"{value:.3f}"


def label(run_dir: str) -> str:
  """'fscdp/seed_0' for reproduce_paper's layout, else the directory's name."""
  parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
  if parts[-1].startswith("seed_") and len(parts) > 1:
    return f"{parts[-2]}/{parts[-1]}"
  return parts[-1]


def row(run_dir: str) -> str:
  """One table row from a run's summary.json; ValueError naming a missing or bad file."""
  path = os.path.join(run_dir, "summary.json")
  if not os.path.isfile(path):
    raise ValueError(f"{run_dir}: no summary.json (an unfinished or failed run?)")
  try:
    with open(path) as f:
      s = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read {path}: {e}") from None
  eps = "not private" if s["epsilon"] is None else f"{s['epsilon']:.3f} ({s['delta']:g})"
  stop = "budget" if s["stop_reason"].startswith("budget") else s["stop_reason"]
  setting = s["setting"].upper()
  if s.get("cdp_impl") == "tf_privacy":  # the two CDP implementations apart
    setting = "CDP (TF Privacy)"
  return (
    f"| {label(run_dir)} | {setting} | "
    f"{100 * s['final_test_accuracy']:.2f} % | {_metric(s, 'balanced_accuracy')} | "
    f"{_metric(s, 'kappa')} | {_metric(s, 'referable_auc')} | {eps} | {s['rounds_run']} | "
    f"{s['epochs']:.2f} | {stop} | {s['wall_time_s']:.0f} s |"
  )


def table(run_dirs: list[str], skipped: list[str] | None = None) -> str:
  """The table of the finished runs; the others' reasons go to `skipped`."""
  rows = []
  for d in run_dirs:
    try:
      rows.append(row(d))
    except ValueError as e:
      if skipped is None:
        raise
      skipped.append(str(e))
  return "\n".join([HEADER, "|" + "---|" * 11, *rows])


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more run directories")
  skipped: list[str] = []
  text = table(argv[1:], skipped)
  for reason in skipped:
    print(f"summarize: skipped {reason}", file=sys.stderr)
  if len(skipped) == len(argv) - 1:
    print("summarize: error: no finished run among the directories given", file=sys.stderr)
    sys.exit(2)
  print(text)


if __name__ == "__main__":
  cli_lib.run(main, "summarize", positional=True)
