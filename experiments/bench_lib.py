"""What the two benchmark binaries share (no flags here: either runs alone)."""

from __future__ import annotations

import resource
import statistics
import tempfile
import time

from dopamine_tff import configs
from dopamine_tff import profiling
from dopamine_tff import runtime
from dopamine_tff import trainers
from dopamine_tff.data import loaders


def fscdp_trainer(data_cfg: loaders.DataConfig, **train):
  """An FSCDP trainer on `data_cfg` (q 0.1, sigma 1, C 1, lr 0.05 unless `train` says)."""
  cfg = configs.TrainConfig(
    **{
      "setting": "fscdp",
      "rounds": 1000,
      "sampling_prob": 0.1,
      "noise_multiplier": 1.0,
      "l2_norm_clip": 1.0,
      "learning_rate": 0.05,
      **train,
    }
  )
  return trainers.make_trainer(
    cfg, loaders.load(data_cfg), tempfile.mkdtemp(), ships_data=runtime.ships_data()
  )


def round_step(trainer):
  """A no-argument callable that runs the trainer's next round (for timing)."""
  holder = {"state": trainer.initial_state(), "r": 0}

  def step():
    r = holder["r"]
    holder["state"] = trainer.run(holder["state"], trainer.plan(r), r).state
    holder["r"] += 1

  return step


def rss_kb(pid: int | None = None) -> int:
  with open(f"/proc/{pid or 'self'}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1])
  return 0


def time_calls(fn, repeats, warmup) -> dict:
  """Median (and every) time of `repeats` calls after `warmup` untimed ones; RSS growth."""
  for _ in range(warmup):
    fn()
  peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  peak1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {
    "median_s": statistics.median(times),
    "times_s": times,
    "peak_rss_growth_mb": (peak1 - peak0) / 1024,
  }


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, dict]:
  """Median times of several functions called round-robin (profiling.interleaved)."""
  times = profiling.interleaved(fns, repeats, warmup)
  return {k: {"median_s": statistics.median(t), "times_s": t} for k, t in times.items()}
