"""A run killed with SIGKILL resumes to the uninterrupted run's result."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dopamine_tff import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
  "--dataset=digits",
  "--num_examples=400",
  "--num_hospitals=4",
  "--rounds=24",
  "--batch_size=16",
  "--local_epochs=1",
  "--sampling_prob=0.1",
  "--noise_multiplier=1.0",
  "--l2_norm_clip=1.0",
  "--learning_rate=0.05",
  "--checkpoint_every=4",
  "--eval_every=3",
  "--seed=5",
]
TIMING = {"round_time_s", "wall_time_s"}


def _cmd(setting, out, *extra):
  return [
    sys.executable,
    "-m",
    "experiments.run_experiment",
    f"--setting={setting}",
    *ARGS,
    f"--output_dir={out}",
    *extra,
  ]


def _rows(out):
  with open(os.path.join(out, "metrics.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _kill_part_way(setting, out, after_rows=10):
  proc = subprocess.Popen(
    _cmd(setting, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.monotonic() + 300
  try:
    while time.monotonic() < deadline:
      path = os.path.join(out, "metrics.csv")
      if os.path.isfile(path) and len(_rows(out)) >= after_rows:
        break
      if proc.poll() is not None:
        raise AssertionError("the run ended before it could be killed")
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("setting", ["fscdp", "fpdp"])
def test_killed_run_resumes_to_the_uninterrupted_result(setting, tmp_path):
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  done = subprocess.run(_cmd(setting, full), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  _kill_part_way(setting, killed)
  rows = _rows(killed)  # the file is well-formed after SIGKILL
  assert 10 <= len(rows) < 24
  assert all(r["round"] and r["epsilon"] for r in rows)
  assert not os.path.exists(os.path.join(killed, "summary.json"))
  saved = checkpoint.rounds(os.path.join(killed, "checkpoints"))
  assert saved and saved[-1] % 4 == 0 and saved[-1] <= len(rows)
  resumed = subprocess.run(
    _cmd(setting, killed, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming after round {saved[-1]}" in resumed.stderr
  a, b = (
    np.load(os.path.join(full, "final_weights.npz")),
    np.load(os.path.join(killed, "final_weights.npz")),
  )
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])
  full_rows, killed_rows = _rows(full), _rows(killed)
  assert len(full_rows) == len(killed_rows) == 24
  for x, y in zip(full_rows, killed_rows):
    assert {k: v for k, v in x.items() if k not in TIMING} == {
      k: v for k, v in y.items() if k not in TIMING
    }
  sa = json.loads((tmp_path / "full" / "summary.json").read_text())
  sb = json.loads((tmp_path / "killed" / "summary.json").read_text())
  assert sa["epsilon"] == sb["epsilon"] and sa["final_test_accuracy"] == sb["final_test_accuracy"]


def test_resume_refuses_another_configuration(tmp_path):
  out = str(tmp_path / "run")
  first = subprocess.run(_cmd("fscdp", out), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0
  other = subprocess.run(
    _cmd("fscdp", out, "--resume", "--noise_multiplier=2.0"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert other.returncode != 0
  assert "belongs to another configuration" in other.stderr


def test_checkpoint_round_trip_and_atomicity(tmp_path):
  d = str(tmp_path)
  checkpoint.save(d, 4, {"weights": [np.ones(3)], "velocity": []}, {"x": 1})
  checkpoint.save(d, 8, {"weights": [np.full(3, 2.0)]}, {"x": 2})
  checkpoint.save(d, 12, {"weights": [np.full(3, 3.0)]}, {"x": 3})
  os.makedirs(os.path.join(d, "ckpt_00000016.tmp"))  # a save killed half-way
  assert checkpoint.rounds(d) == [8, 12]
  arrays, meta = checkpoint.load_latest(d)
  assert meta == {"x": 3, "round": 12}
  np.testing.assert_array_equal(arrays["weights"][0], np.full(3, 3.0))
  assert checkpoint.load_latest(str(tmp_path / "none")) is None
