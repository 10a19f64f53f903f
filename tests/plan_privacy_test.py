"""The q / rounds / sigma planner: its sigma meets the target, and tightly."""

import os
import subprocess
import sys

import pytest

from dopamine_tff import accounting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("batch,epochs", [(50, 20), (200, 5)])
def test_planned_sigma_meets_the_target_and_no_less_noise_would(batch, epochs):
  row = accounting.plan_dp_sgd(2931, 8.0, 1e-4, batch, epochs)
  assert row["q"] == pytest.approx(batch / 2931)
  assert row["steps"] == -(-epochs * 2931 // batch)  # ceil(epochs / q)
  spec = accounting.StepSpec(row["q"], row["sigma"], row["steps"])
  assert accounting.epsilon_of([spec], 1e-4) <= 8.0 + 1e-3
  less = accounting.StepSpec(row["q"], row["sigma"] * 0.98, row["steps"])
  assert accounting.epsilon_of([less], 1e-4) > 8.0


def test_binary_prints_the_table_and_flags():
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.plan_privacy",
      "--num_examples=2400",
      "--target_epsilon=10.4",
      "--delta=1e-4",
      "--expected_batch=120",
      "--epochs=20",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  # The cpu preset's recipe: q = 0.05, 400 steps, sigma about 0.8.
  assert "| 120 | 20 | 0.05000 | 400 | 0.80" in proc.stdout
  assert "--sampling_prob=0.05 --rounds=400 --noise_multiplier=0.80" in proc.stdout


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--target_epsilon=-1", "--target_epsilon must be given and > 0"),
    ("--expected_batch=5000", "expected_batch=5000.0 must be in (0, num_examples=2400]"),
  ],
)
def test_bad_input_is_one_line(flag, message):
  args = ["--num_examples=2400", "--target_epsilon=5", flag]
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.plan_privacy", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
