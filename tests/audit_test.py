"""Membership-inference audit: it detects leakage, and DP runs stay under epsilon."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dopamine_tff import audit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outputs(separated: bool, n=300, seed=0):
  rng = np.random.default_rng(seed)
  li, lo = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
  yi, yo = rng.integers(0, 5, n), rng.integers(0, 5, n)
  if separated:
    li[np.arange(n), yi] += 6.0  # members: confident and right (memorised)
  return li, lo, yi, yo


def test_attack_finds_a_memorising_model():
  result = audit.attack_outputs(*_outputs(True))
  assert result["max_auc"] > 0.95 and result["max_advantage"] > 0.8
  assert result["epsilon_lower_bound"] > 2.0


def test_attack_finds_little_when_members_look_like_non_members():
  result = audit.attack_outputs(*_outputs(False))
  assert result["max_auc"] < 0.6
  assert result["epsilon_lower_bound"] < 1.0


def test_too_few_examples_is_refused():
  import tensorflow as tf

  model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(2)])
  x = np.zeros((5, 2), np.float32)
  y = np.zeros(5, np.int32)
  with pytest.raises(ValueError, match=">= 10 members"):
    audit.membership_audit(model, [v.numpy() for v in model.trainable_variables], (x, y), (x, y))


@pytest.mark.parametrize("setting", ["fscdp", "c"])
def test_audit_in_run_experiment_and_bound_below_reported_epsilon(setting, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "experiments.run_experiment",
    f"--setting={setting}",
    "--dataset=digits",
    "--num_hospitals=4",
    "--rounds=20",
    "--sampling_prob=0.1",
    "--noise_multiplier=1.0",
    "--l2_norm_clip=1.0",
    "--learning_rate=0.1",
    "--batch_size=32",
    "--eval_every=10",
    "--audit",
    f"--output_dir={tmp_path}",
  ]
  if setting == "c":
    cmd[cmd.index("--rounds=20")] = "--rounds=3"
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  result = summary["audit"]
  assert result["members"] == result["non_members"] > 300
  assert set(result["attacks"]) == {"threshold_attack", "logistic_regression"}
  if setting == "fscdp":
    assert summary["epsilon"] > 0
    assert result["epsilon_lower_bound"] <= summary["epsilon"]
  assert "empirical epsilon lower bound" in proc.stderr
