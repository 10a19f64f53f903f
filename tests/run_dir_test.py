"""The output directory: a previous run is refused, resumed or replaced, never clobbered."""

import os
import subprocess
import sys

import pytest

from dopamine_tff import configs
from dopamine_tff.program import checkpoint
from dopamine_tff.program import run_dir


def test_a_previous_run_is_refused_without_resume_or_overwrite(tmp_path):
  out = str(tmp_path)
  run_dir.check_output_dir(out, configs.LoopOptions())  # empty: fine
  (tmp_path / "metrics.csv").write_text("round\n")
  with pytest.raises(run_dir.RunDirError, match=r"holds a previous run \(metrics.csv\)"):
    run_dir.check_output_dir(out, configs.LoopOptions())
  run_dir.check_output_dir(out, configs.LoopOptions(resume=True))
  run_dir.check_output_dir(out, configs.LoopOptions(overwrite=True))


def test_an_empty_checkpoint_folder_is_not_a_run(tmp_path):
  os.makedirs(tmp_path / "checkpoints")
  assert run_dir.previous_run_files(str(tmp_path)) == []
  checkpoint.save(str(tmp_path / "checkpoints"), 3, {"weights": []}, {})
  assert run_dir.previous_run_files(str(tmp_path)) == ["checkpoints"]


def test_removing_a_run_leaves_the_user_s_files(tmp_path):
  for name in ("metrics.csv", "summary.json", "hparams.json", "notes.txt"):
    (tmp_path / name).write_text("x")
  os.makedirs(tmp_path / "tensorboard")
  run_dir.remove_run_files(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_json_is_written_atomically(tmp_path):
  path = str(tmp_path / "s.json")
  run_dir.write_json(path, {"b": 1, "a": float("inf")})
  with open(path) as f:
    assert f.read().splitlines()[1].strip() == '"a": Infinity,'
  assert not os.path.exists(path + ".tmp")


def test_a_file_or_an_unwritable_place_is_one_line_before_anything_runs(tmp_path):
  """Issue 22 item 3: these were a FileExistsError / PermissionError traceback."""
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(run_dir.RunDirError, match="is a file, not a directory"):
    run_dir.check_output_dir(str(tmp_path / "a_file"), configs.LoopOptions())
  with pytest.raises(run_dir.RunDirError, match="is a file, not a directory"):
    run_dir.check_output_dir(str(tmp_path / "a_file" / "run"), configs.LoopOptions())
  # /proc refuses new files even to root (a read-only place for any user).
  with pytest.raises(run_dir.RunDirError, match="cannot write in /proc"):
    run_dir.check_output_dir("/proc/dopamine_tff_run", configs.LoopOptions())
  run_dir.check_output_dir(str(tmp_path / "new" / "deeper"), configs.LoopOptions())
  assert not (tmp_path / "new").exists()  # the check creates nothing
  assert sorted(os.listdir(tmp_path)) == ["a_file"]


def _hold_lock(directory):
  """Another process holding `directory`'s run lock, as a running run does."""
  code = (
    "import fcntl, os, sys, time\n"
    f"fd = os.open({os.path.join(directory, run_dir.LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n"
  )
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_directory_another_process_runs_in_is_refused_naming_its_pid(tmp_path):
  (tmp_path / ".scratch").mkdir()
  (tmp_path / ".scratch" / "hospital_0000.tfrec").write_text("the running run's data")
  holder = _hold_lock(str(tmp_path))
  try:
    refused = pytest.raises(
      run_dir.RunDirError, match=rf"in use by another run \(PID {holder.pid}\)"
    )
    with refused, run_dir.exclusive(str(tmp_path)):
      run_dir.make_scratch(str(tmp_path))
    # The running run's scratch files are untouched.
    assert (tmp_path / ".scratch" / "hospital_0000.tfrec").exists()
  finally:
    holder.kill()
    holder.wait()
  # The kernel released the dead holder's lock: the directory is free again.
  with run_dir.exclusive(str(tmp_path)), run_dir.exclusive(str(tmp_path)):  # re-entrant
    run_dir.make_scratch(str(tmp_path), log=lambda _: None)
  assert not list((tmp_path / ".scratch").iterdir())


def test_scratch_is_never_cleaned_without_the_lock(tmp_path):
  with pytest.raises(RuntimeError, match="outside run_dir.exclusive"):
    run_dir.make_scratch(str(tmp_path))


def test_a_directory_the_lock_created_goes_when_nothing_was_written(tmp_path):
  out = tmp_path / "new"
  with run_dir.exclusive(str(out)):
    assert sorted(os.listdir(out)) == [run_dir.LOCK]
  assert not out.exists()
