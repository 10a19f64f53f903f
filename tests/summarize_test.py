"""The results-table binary."""

import json

import pytest

from experiments import summarize


def _summary(tmp_path, name, **kw):
  d = tmp_path / name
  d.mkdir()
  blob = {
    "setting": "fscdp",
    "epsilon": 1.23456,
    "delta": 1e-4,
    "final_test_accuracy": 0.5,
    "rounds_run": 7,
    "epochs": 0.35,
    "stop_reason": "budget: round 8 would exceed epsilon 1.3",
    "wall_time_s": 3.0,
  }
  blob.update(kw)
  (d / "summary.json").write_text(json.dumps(blob))
  return str(d)


def test_table_rows(tmp_path):
  a = _summary(tmp_path, "dp")
  b = _summary(tmp_path, "plain", setting="c", epsilon=None, delta=None, stop_reason="completed")
  lines = summarize.table([a, b]).splitlines()
  assert (
    lines[2] == "| dp | FSCDP | 50.00 % | - | - | - | 1.235 (0.0001) | 7 | 0.35 | budget | 3 s |"
  )
  assert "not private" in lines[3] and "completed" in lines[3]


def test_missing_summary_is_named(tmp_path):
  with pytest.raises(ValueError, match="summary.json"):
    summarize.row(str(tmp_path))


def test_reproduce_layout_is_labelled_setting_and_seed(tmp_path):
  (tmp_path / "cdp").mkdir()
  run = _summary(tmp_path / "cdp", "seed_3", setting="cdp")
  assert summarize.row(run).startswith("| cdp/seed_3 | CDP |")


def test_binary_skips_unfinished_runs_in_one_line(tmp_path):
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = _summary(tmp_path, "done")
  (tmp_path / "unfinished").mkdir()

  def run(*dirs):
    return subprocess.run(
      [sys.executable, "-m", "experiments.summarize", *dirs],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=120,
    )

  proc = run(done, str(tmp_path / "unfinished"))
  assert proc.returncode == 0 and "| done | FSCDP |" in proc.stdout
  skipped = [li for li in proc.stderr.splitlines() if li.startswith("summarize:")]
  assert skipped == [
    f"summarize: skipped {tmp_path / 'unfinished'}: no summary.json (an unfinished or failed run?)"
  ]
  assert "Traceback" not in proc.stderr
  none = run(str(tmp_path / "unfinished"))
  assert (
    none.returncode == 2 and "no finished run" in none.stderr and "Traceback" not in none.stderr
  )
