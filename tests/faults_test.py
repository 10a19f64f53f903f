"""Real processes, real signals (issue 22 items 1, 2 and 7).

A dead TFF worker ends the run with one line instead of hanging in gRPC
retries; SIGTERM acts as Ctrl-C (round, checkpoint, one line, exit 143); the
shard files (copies of the training data) live under the run's directory and
are removed on every exit that runs code, and a SIGKILLed run's are removed
by the next start, which says so.
"""

import contextlib
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from tests import procs

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

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
  assert glob.glob(os.path.join(out, ".scratch", "shards", "*.tfrec"))
  # SIGKILL runs no code: the copies (a file per image for FSCDP) stay until the next start
  left = [f for _, _, files in os.walk(os.path.join(out, ".scratch")) for f in files]
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


@contextlib.contextmanager
def _tmpfs(mount, size: str):
  """A real tmpfs of `size` at `mount` (skipped where this process may not mount one)."""
  mount.mkdir()
  proc = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
    capture_output=True,
    text=True,
  )
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
  with _tmpfs(tmp_path / "disk", "64m") as mount:
    yield mount


def _fill(directory):
  """Writes a file until the disk is full; returns its path."""
  path = os.path.join(directory, "filler")
  fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
  try:
    for size in (1 << 16, 1 << 10, 1):
      try:
        while os.write(fd, b"\0" * size):
          pass
      except OSError:
        continue
  finally:
    os.close(fd)
  return path


def test_a_full_disk_ends_the_run_in_one_line_and_resume_finishes_it(small_disk, tmp_path):
  """The review: ENOSPC was an OSError traceback. Now one line naming the file,
  the last checkpoint intact, nothing temporary left; after space is freed,
  --resume reaches the uninterrupted run's weights (seeded mode)."""
  short = [a for a in ARGS if not a.startswith("--rounds")] + ["--rounds=30"]
  seeded = [*short, "--insecure_seeded_noise", "--checkpoint_every=1", "--seed=3"]
  cmd = [sys.executable, "-m", "experiments.run_experiment", *seeded]
  straight = subprocess.run(
    [*cmd, f"--output_dir={tmp_path / 'straight'}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert straight.returncode == 0, straight.stderr[-2000:]
  out = str(small_disk / "run")
  proc = subprocess.Popen(
    [*cmd, f"--output_dir={out}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 300
  while not glob.glob(os.path.join(out, "checkpoints", "ckpt_*[0-9]")):
    assert proc.poll() is None and time.monotonic() < deadline, "the run ended early"
    time.sleep(0.05)
  filler = _fill(str(small_disk))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-2000:]
  assert "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith("run_experiment: error: cannot write the ") and "--resume" in line
  assert "No space left on device" in line
  left = [p for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if ".tmp" in p]
  assert left == []
  os.remove(filler)
  resumed = subprocess.run(
    [*cmd, f"--output_dir={out}", "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  a = np.load(os.path.join(out, "final_weights.npz"))
  b = np.load(tmp_path / "straight" / "final_weights.npz")
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])


def test_a_disk_too_small_for_the_training_data_copies_is_one_line(tmp_path):
  """The review: a full disk while the shards were written was TF's
  ResourceExhaustedError traceback."""
  with _tmpfs(tmp_path / "tiny", "48k") as mount:
    run = subprocess.run(
      [sys.executable, "-m", "experiments.run_experiment", *ARGS, f"--output_dir={mount / 'run'}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("run_experiment: error: cannot write the training-data shard ")
    assert not glob.glob(str(mount / "run" / ".scratch" / "*.tmp"))
