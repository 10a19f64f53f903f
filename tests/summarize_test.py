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
  assert lines[2] == "| dp | FSCDP | 50.00 % | 1.235 (0.0001) | 7 | 0.35 | budget | 3 s |"
  assert "not private" in lines[3] and "completed" in lines[3]


def test_missing_summary_is_named(tmp_path):
  with pytest.raises(ValueError, match="summary.json"):
    summarize.row(str(tmp_path))
