"""What many test files share: a tiny FSCDP configuration and running a binary."""

import os
import subprocess
import sys

from dopamine_tff import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(**kw) -> configs.TrainConfig:
  """A TrainConfig of a few in-process FSCDP rounds on the tests' small data; `kw` overrides."""
  base = dict(
    setting="fscdp",
    rounds=4,
    sampling_prob=0.1,
    noise_multiplier=1.0,
    l2_norm_clip=1.0,
    learning_rate=0.05,
    runtime="in_process",
  )
  return configs.TrainConfig(**{**base, **kw})


def run_binary(binary: str, *args, output_dir=None, timeout: float = 600, **kw):
  """`python -m experiments.<binary> args [--output_dir=...]` from the repository root."""
  cmd = [sys.executable, "-m", f"experiments.{binary}", *map(str, args)]
  if output_dir is not None:
    cmd.append(f"--output_dir={output_dir}")
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
