"""Prints a Markdown results table from run_experiment output directories.

python -m experiments.summarize runs/digits/*
"""

from __future__ import annotations

import json
import os

from absl import app

HEADER = (
  "| run | setting | test accuracy | epsilon (delta) | rounds | epochs | stopped | wall time |"
)


def row(run_dir: str) -> str:
  """One table row from a run's summary.json."""
  path = os.path.join(run_dir, "summary.json")
  try:
    with open(path) as f:
      s = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read {path}: {e}") from None
  eps = "not private" if s["epsilon"] is None else f"{s['epsilon']:.3f} ({s['delta']:g})"
  stop = "budget" if s["stop_reason"].startswith("budget") else s["stop_reason"]
  return (
    f"| {os.path.basename(os.path.normpath(run_dir))} | {s['setting'].upper()} | "
    f"{100 * s['final_test_accuracy']:.2f} % | {eps} | {s['rounds_run']} | "
    f"{s['epochs']:.2f} | {stop} | {s['wall_time_s']:.0f} s |"
  )


def table(run_dirs: list[str]) -> str:
  return "\n".join([HEADER, "|" + "---|" * 8, *(row(d) for d in run_dirs)])


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more run directories")
  print(table(argv[1:]))


if __name__ == "__main__":
  app.run(main)
