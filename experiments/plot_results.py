"""Redraws the results table and Figure 1 from existing run directories.

python -m experiments.plot_results --runs_dir=results/cpu
"""

from __future__ import annotations

import os
import sys

from absl import flags

from dopamine_tff import grading_report
from dopamine_tff import plotting
from dopamine_tff import results_tables
from experiments import cli_lib

_RUNS_DIR = flags.DEFINE_string(
  "runs_dir", None, "Root holding <setting>/seed_<n>/ runs.", required=True
)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write (default: --runs_dir).")
_FIGURES = flags.DEFINE_bool(
  "figures", True, "Draw Figure 1 (off: the table only, e.g. for runs that are not settings)."
)
_TITLE = flags.DEFINE_string(
  "title", None, "Figure title (default: the preset and data set the runs record)."
)


def main(argv):
  del argv
  out = _OUT_DIR.value or _RUNS_DIR.value
  try:
    runs = results_tables.collect(_RUNS_DIR.value)
  except (OSError, ValueError) as e:
    print(f"plot_results: error: {e}", file=sys.stderr)
    sys.exit(2)
  if not runs:
    print(f"plot_results: error: no finished runs under {_RUNS_DIR.value}", file=sys.stderr)
    sys.exit(2)
  os.makedirs(out, exist_ok=True)
  if os.path.exists(os.path.join(out, "results.md")):
    print(f"replacing the table and figures in {out}", file=sys.stderr)
  rows = results_tables.table_rows(runs)
  grades = grading_report.markdown_of(runs)
  results_tables.write_table(
    rows, os.path.join(out, "results.csv"), os.path.join(out, "results.md"), grades
  )
  title = _TITLE.value if _TITLE.value is not None else results_tables.default_title(runs)
  figures = [*plotting.draw_figures(runs, out, title), *grading_report.draw(runs, out, title)]
  for path in figures if _FIGURES.value else []:
    print(path)
  print(results_tables.markdown(rows) + (f"\n\n{grades}" if grades else ""))


if __name__ == "__main__":
  cli_lib.run(main, "plot_results")
