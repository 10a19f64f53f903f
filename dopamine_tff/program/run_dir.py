"""What a run writes into its output directory, and when a start may clobber it.

* hparams.json: every hyper-parameter of the run (written first);
* metrics.csv: one row per round (flushed every round);
* tensorboard/: the same scalars as TensorBoard events;
* checkpoints/: program state, ledgers and round (dopamine_tff/program/checkpoint.py);
* summary.json: final accuracy, epsilon, delta, rounds run, why it stopped;
* model.keras and final_weights.npz: the final global model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from dopamine_tff import configs
from dopamine_tff.program import checkpoint

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


class RunDirError(ValueError):
  """The output directory holds a run that this start would clobber or mismatch."""


def write_json(path: str, blob: dict) -> None:
  """Writes `blob` to `path` atomically (a killed write leaves the old file)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(blob, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


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
  if os.path.exists(path):
    count = sum(len(files) for _, _, files in os.walk(path))
    shutil.rmtree(path)
    log(f"removed {count} scratch file(s) (training-data copies) left by a killed run in {path}")
  os.makedirs(path, mode=0o700)
  os.chmod(path, 0o700)  # whatever the umask
  return path


def remove_scratch(output_dir: str, created: bool = False) -> None:
  """Removes the scratch directory, and `output_dir` too when this start created it
  and nothing else was written (a run refused before its first round leaves nothing)."""
  shutil.rmtree(os.path.join(output_dir, SCRATCH), ignore_errors=True)
  if created and os.path.isdir(output_dir) and not os.listdir(output_dir):
    os.rmdir(output_dir)
