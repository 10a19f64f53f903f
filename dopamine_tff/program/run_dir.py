"""What a run writes into its output directory, and when a start may clobber it.

* hparams.json: every hyper-parameter of the run (written first);
* metrics.csv: one row per round (flushed every round);
* tensorboard/: the same scalars as TensorBoard events;
* checkpoints/: program state, ledgers and round (dopamine_tff/program/checkpoint.py);
* summary.json: final accuracy, epsilon, delta, rounds run, why it stopped;
* model.keras and final_weights.npz: the final global model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile

from dopamine_tff import configs
from dopamine_tff.program import checkpoint
from dopamine_tff.program import durable

# What a run writes into its directory (and --overwrite removes).
RUN_FILES = (
  "checkpoints",
  "tensorboard",
  "metrics.csv",
  "summary.json",
  "model.keras",
  "final_weights.npz",
  "hparams.json",
)


SCRATCH = ".scratch"  # the run's shard files: copies of the training data
LOCK = ".lock"  # held (flock) by the one process that runs in the directory


class RunDirError(ValueError):
  """The output directory holds a run that this start would clobber or mismatch."""


def write_json(path: str, blob: dict) -> None:
  """Writes `blob` to `path` atomically and durably (a killed write or a power
  cut leaves the old file or the new one, never a mix)."""
  tmp = path + ".tmp"
  with durable.writing(path, os.path.basename(path), cleanup=tmp):
    with open(tmp, "w") as f:
      json.dump(blob, f, indent=2, sort_keys=True, default=str)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    durable.fsync_dir(os.path.dirname(os.path.abspath(path)))


_HELD: dict[str, int] = {}  # real path of an output directory -> the fd holding its lock


@contextlib.contextmanager
def exclusive(output_dir: str):
  """One run per directory: an exclusive flock on <output_dir>/.lock for the block.

  The kernel releases it when the process dies, however it dies. Re-entrant
  within one process. A directory this call created is removed again when
  the block leaves nothing in it but the lock.

  Raises:
    RunDirError: another process holds the directory (named by its PID).
  """
  path = os.path.realpath(output_dir)
  if path in _HELD:
    yield
    return
  check_writable(output_dir)
  created = not os.path.exists(path)
  os.makedirs(path, exist_ok=True)
  lock = os.path.join(path, LOCK)
  fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise RunDirError(
      f"{output_dir} is in use by another run (PID {holder}); wait for it to end or stop it "
      "(its --resume continues it), or use another --output_dir"
    ) from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  _HELD[path] = fd
  try:
    yield
  finally:
    del _HELD[path]
    if created and os.path.isdir(path) and os.listdir(path) == [LOCK]:
      shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def previous_run_files(output_dir: str) -> list[str]:
  """The run files (RUN_FILES, hparams.json aside) already in `output_dir`."""
  if not os.path.isdir(output_dir):
    return []
  found = [n for n in RUN_FILES[:-1] if os.path.exists(os.path.join(output_dir, n))]
  if "checkpoints" in found and not checkpoint.rounds(os.path.join(output_dir, "checkpoints")):
    found.remove("checkpoints")
  return found


def has_checkpoint(output_dir: str) -> bool:
  """Whether `output_dir` holds a complete checkpoint to resume from."""
  return bool(checkpoint.rounds(os.path.join(output_dir, "checkpoints")))


def recorded_flags(output_dir: str) -> dict:
  """The flag values a run in `output_dir` was started with (its hparams.json).

  Raises:
    RunDirError: the file is missing or unreadable: a resume could then only
      guess the run's budget and rounds, so it is refused.
  """
  path = os.path.join(output_dir, "hparams.json")
  try:
    with open(path) as f:
      blob = json.load(f)
  except FileNotFoundError:
    raise RunDirError(
      f"--resume: {path} (the run's recorded flags) is missing; without it the run's budget "
      "and rounds are unknown; start a new run with --overwrite or another --output_dir"
    ) from None
  except (OSError, ValueError) as e:
    raise RunDirError(f"--resume: cannot read {path} (the run's recorded flags): {e}") from None
  if not isinstance(blob, dict):
    raise RunDirError(f"--resume: {path} is not a JSON object of flag values")
  return blob


def check_writable(output_dir: str) -> None:
  """RunDirError unless `output_dir` is (or can be made) a directory this process writes in.

  Probes the nearest existing ancestor with a temporary file (removed at once),
  so a file in the way or a read-only place is one line before anything runs.
  """
  path = os.path.abspath(output_dir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise RunDirError(f"--output_dir={output_dir}: {path} is a file, not a directory")
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise RunDirError(f"--output_dir={output_dir}: cannot write in {path} ({e.strerror})") from None


def check_output_dir(output_dir: str, options: configs.LoopOptions) -> None:
  """RunDirError when `output_dir` cannot be written, or holds a run and neither
  resume nor overwrite is set."""
  check_writable(output_dir)
  found = previous_run_files(output_dir)
  if found and not (options.resume or options.overwrite):
    raise RunDirError(
      f"{output_dir} holds a previous run ({', '.join(found)}); pass --resume to continue "
      "it or --overwrite to replace it"
    )


def remove_run_files(output_dir: str) -> None:
  """Deletes what a run wrote (RUN_FILES), leaving anything else in place."""
  for name in RUN_FILES:
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def make_scratch(output_dir: str, log=print) -> str:
  """A fresh owner-only (0700) scratch directory in `output_dir` for the shard files.

  A previous run killed without cleaning up (SIGKILL, a power cut) left its
  copies of the training data there: they are removed first, and the log says so.
  """
  path = os.path.join(output_dir, SCRATCH)
  if os.path.realpath(output_dir) not in _HELD:
    raise RuntimeError(f"make_scratch outside run_dir.exclusive({output_dir!r})")
  if os.path.exists(path):  # under the lock: no run is using them
    count = sum(len(files) for _, _, files in os.walk(path))
    shutil.rmtree(path)
    log(f"removed {count} scratch file(s) (training-data copies) left by a killed run in {path}")
  os.makedirs(path, mode=0o700)
  os.chmod(path, 0o700)  # whatever the umask
  return path


def remove_scratch(output_dir: str) -> None:
  """Removes the scratch directory (the directory itself, if this start made
  it and nothing else was written, goes with the lock: `exclusive`)."""
  shutil.rmtree(os.path.join(output_dir, SCRATCH), ignore_errors=True)


WriteFailed = durable.WriteFailed  # what the binaries catch
