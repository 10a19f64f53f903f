"""Real processes, real signals (issue 22 items 1, 2 and 7).

A dead TFF worker ends the run with one line instead of hanging in gRPC
retries; SIGTERM acts as Ctrl-C (round, checkpoint, one line, exit 143); the
shard files (copies of the training data) live under the run's directory and
are removed on every exit that runs code, and a SIGKILLed run's are removed
by the next start, which says so.
"""

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
  "--setting=fscdp",
  "--dataset=digits",
  "--num_examples=400",
  "--num_hospitals=4",
  "--rounds=400",
  "--sampling_prob=0.1",
  "--noise_multiplier=1.0",
  "--learning_rate=0.05",
  "--checkpoint_every=2",
  "--eval_every=2",
]


@pytest.fixture
def start():
  """Starts runs; any still running when the test ends (a failure) is killed."""
  started = []

  def run(out, *extra):
    cmd = [sys.executable, "-m", "experiments.run_experiment", *ARGS, f"--output_dir={out}", *extra]
    proc = subprocess.Popen(
      cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    started.append(proc)
    return proc

  yield run
  for proc in started:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _wait_for_checkpoint(proc, out, timeout_s=300):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if glob.glob(os.path.join(out, "checkpoints", "ckpt_*[0-9]")):
      return
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.05)
  raise AssertionError("no checkpoint in time")


def _our_lines(err):
  return [li for li in err.splitlines() if li.startswith("run_experiment:")]


def test_a_killed_worker_ends_the_run_with_one_line(tmp_path, start):
  out = str(tmp_path / "run")
  proc = start(out)
  _wait_for_checkpoint(proc, out)
  workers = procs.children(proc.pid)
  assert workers, "the TFF worker was not started"
  os.kill(workers[0], signal.SIGKILL)
  t0 = time.monotonic()
  _, err = proc.communicate(timeout=120)
  assert time.monotonic() - t0 < 60  # it retried gRPC for 180 s and never exited
  assert proc.returncode == 1, err[-2000:]
  (line,) = _our_lines(err)
  assert "the TFF worker (pid" in line and "died (signal 9 (SIGKILL))" in line
  assert "rerun with --resume" in line and "Traceback" not in err
  assert not os.path.exists(os.path.join(out, ".scratch"))  # no training data left behind


def test_sigterm_checkpoints_and_exits_143_leaving_no_data_copies(tmp_path, start):
  out = str(tmp_path / "run")
  proc = start(out)
  _wait_for_checkpoint(proc, out)
  scratch = os.path.join(out, ".scratch")
  assert os.stat(scratch).st_mode & 0o777 == 0o700
  assert glob.glob(os.path.join(scratch, "shards", "*.tfrec"))
  workers = procs.children(proc.pid)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-2000:]
  (line,) = _our_lines(err)
  assert "interrupted by SIGTERM after round" in line and "Traceback" not in err
  assert not os.path.exists(scratch)
  assert all(procs.dead(w) for w in workers)
  assert not glob.glob(os.path.join(tempfile.gettempdir(), f"dopamine_tff_worker_{proc.pid}_*"))


def test_a_sigkilled_run_s_data_copies_are_removed_by_the_next_start(tmp_path, start):
  out = str(tmp_path / "run")
  proc = start(out)
  _wait_for_checkpoint(proc, out)
  workers = procs.children(proc.pid)
  proc.kill()
  proc.communicate(timeout=60)
  assert all(procs.dead(w) for w in workers)  # the worker dies with its parent
  left = glob.glob(os.path.join(out, ".scratch", "shards", "*.tfrec"))
  assert left  # SIGKILL runs no code: the copies stay until the next start
  resumed = subprocess.run(
    [sys.executable, "-m", "experiments.run_experiment", *ARGS, f"--output_dir={out}",
     "--resume", "--rounds=6"],
    cwd=ROOT, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"removed {len(left)} scratch file(s) (training-data copies) left by a killed run" in (
    resumed.stderr
  )
  assert not os.path.exists(os.path.join(out, ".scratch"))


def test_a_second_ctrl_c_exits_at_once_without_tracebacks(tmp_path, start):
  out = str(tmp_path / "run")
  proc = start(out)
  _wait_for_checkpoint(proc, out)
  workers = procs.children(proc.pid)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  t0 = time.monotonic()
  _, err = proc.communicate(timeout=120)
  assert time.monotonic() - t0 < 30
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err and "closed channel" not in err
  assert len(_our_lines(err)) == 1
  assert all(procs.dead(w) for w in workers)
  assert glob.glob(os.path.join(out, "checkpoints", "ckpt_*[0-9]"))  # the last one intact
