"""The --trainable benchmark runs and reports a ratio per frozen variant."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_rows_and_ratios(tmp_path):
  out = tmp_path / "b.json"
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.trainable_benchmark", "--quick", f"--output={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  blob = json.loads(out.read_text())
  rows = {r["trainable"]: r for r in blob["rows"]}
  assert set(rows) == {"all", "from:conv2", "head"}
  assert rows["all"]["over_all"] == 1.0
  # Fewer trainable parameters down the list (the timings are not asserted: no timed tests).
  params = [rows[k]["trainable_parameters"] for k in ("all", "from:conv2", "head")]
  assert params == sorted(params, reverse=True) and params[-1] == 64 * 5 + 5
  assert set(blob["ratios"]) == {"from_over_all_small_cnn", "head_over_all_small_cnn"}
  assert "--quick" in blob["command"]
