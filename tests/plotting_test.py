"""Figure 1 and the table from run directories (dopamine_tff/plotting.py).

Each figure rule is checked on the drawn matplotlib objects: the legend
covers no curve, the paper's far points do not stretch our epsilon axis,
CDP's markers let FSCDP's show, and round 0 (the starting weights) is drawn.
"""

import csv
import json

import numpy as np
import pytest

from dopamine_tff import plotting
from dopamine_tff import results_tables


def _write_run(d, setting, seed, eps_end, acc_end, initial=None):
  d.mkdir(parents=True)
  rounds = 10
  with open(d / "metrics.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["round", "epochs", "test_accuracy", "test_loss", "epsilon", "kappa"])
    for r in range(1, rounds + 1):
      eps = "inf" if eps_end is None else eps_end * (r / rounds) ** 0.5
      acc = 0.48 + (acc_end - 0.48) * r / rounds + 0.01 * seed
      w.writerow([r, r / 2, acc, 1.0, eps, acc - 0.1])
  # DP loses the rare grades first: recall of grades 3 and 4 falls with the accuracy.
  recall = [0.95, 0.4, 0.7, acc_end - 0.4 + 0.01 * seed, acc_end - 0.3]
  summary = dict(
    final_test_accuracy=acc_end, epsilon=eps_end, delta=1e-4, epochs=5.0, rounds_run=rounds,
    wall_time_s=1.0, majority_class_accuracy=0.483, seed=seed, initial_test_accuracy=initial,
    final_kappa=acc_end - 0.1 + 0.01 * seed, final_referable_auc=0.9, final_recall=recall,
    final_balanced_accuracy=float(np.mean(recall)), final_referable_sensitivity=0.8,
    final_referable_specificity=0.85, final_referable_specificity_at90=0.7,
  )  # fmt: skip
  (d / "summary.json").write_text(json.dumps(summary))
  (d / "hparams.json").write_text(json.dumps({"preset": "cpu", "data": {"dataset": "synthetic"}}))


@pytest.fixture
def runs(tmp_path):
  for setting, eps, acc in (("c", None, 0.8), ("cdp", 10.4, 0.66), ("fscdp", 10.4, 0.66)):
    for seed in range(3):
      _write_run(tmp_path / setting / f"seed_{seed}", setting, seed, eps, acc, initial=0.2)
  return results_tables.collect(str(tmp_path))


def _boxes_overlap(a, b) -> bool:
  return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("panel", [p[0] for p in plotting.PANELS])
def test_the_legend_covers_no_axes(runs, panel):
  fig = plotting.figure(runs, panel, "t")
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  (legend,) = fig.legends
  box = legend.get_window_extent(renderer)
  for ax in fig.axes:
    assert not _boxes_overlap(box, ax.get_window_extent(renderer)), panel


def test_far_paper_points_go_to_a_broken_axis_not_ours(runs):
  fig = plotting.figure(runs, "accuracy_vs_epsilon")
  main, side = fig.axes
  x0, x1 = main.get_xlim()
  assert x1 < 12  # our runs end at 10.4; the paper's FPDP point (19) does not stretch it
  on_side = {tuple(line.get_xydata()[0]) for line in side.get_lines() if len(line.get_xdata()) == 1}
  assert (19.0, 0.734) in on_side
  on_main = [tuple(line.get_xydata()[0]) for line in main.get_lines() if len(line.get_xdata()) == 1]
  assert (9.1, 0.744) in on_main and (10.8, 0.7425) in on_main  # near ones stay in place
  y0, y1 = main.get_ylim()
  assert y0 < 0.483 and y1 > 0.744  # the majority rate and every paper point are in view


def test_cdp_markers_are_hollow_so_fscdp_shows_through(runs):
  fig = plotting.figure(runs, "epsilon_vs_epochs")
  lines = {line.get_label().split(" (")[0]: line for line in fig.axes[0].get_lines()}
  assert lines["CDP"].get_markerfacecolor() == "none"
  assert lines["FSCDP"].get_markerfacecolor() != "none"


def test_curves_start_at_round_0_with_the_starting_weights(runs):
  run = runs["fscdp"][0]
  assert run["metrics"]["round"][0] == 0 and run["metrics"]["epsilon"][0] == 0
  assert run["metrics"]["test_accuracy"][0] == pytest.approx(0.2)
  fig = plotting.figure(runs, "accuracy_vs_epochs")
  fscdp = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith("FSCDP"))
  assert fscdp.get_xdata()[0] == 0 and fscdp.get_ydata()[0] == pytest.approx(0.2)


def test_draw_figures_writes_every_panel(runs, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  paths = plotting.draw_figures(runs, str(out), results_tables.default_title(runs))
  assert len(paths) == 8 and all((out / p.split("/")[-1]).stat().st_size > 1000 for p in paths)
  assert results_tables.default_title(runs) == "cpu preset, synthetic"
  rows = results_tables.table_rows(runs)
  assert [r["setting"] for r in rows] == ["c", "cdp", "fscdp"]
  assert np.isfinite(rows[1]["accuracy_ci95"])  # three runs: an interval


def test_the_grading_table_and_the_recall_figure(runs, tmp_path):
  from dopamine_tff import grading_report

  rows = grading_report.table_rows(runs)
  text = grading_report.markdown(rows)
  assert "| setting | kappa | referable AUC |" in text and "4 proliferative" in text
  fscdp = next(r for r in rows if r["setting"] == "fscdp")
  assert fscdp["kappa"]["n"] == 3 and abs(fscdp["kappa"]["mean"] - 0.57) < 1e-9
  assert abs(fscdp["recall"][3]["mean"] - 0.27) < 1e-9 and fscdp["recall"][3]["std"] > 0
  assert "0.570 ± 0.010 [" in text  # mean ± std [95 % interval] from 3 seeds
  extra = grading_report.markdown_of(runs)
  results_tables.write_table(
    results_tables.table_rows(runs), tmp_path / "r.csv", tmp_path / "r.md", extra
  )
  assert "Recall per grade" in (tmp_path / "r.md").read_text()
  paths = grading_report.draw(runs, str(tmp_path))
  assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "pdf"]
  assert any(p.endswith("kappa_vs_epsilon.png") for p in plotting.draw_figures(runs, str(tmp_path)))
