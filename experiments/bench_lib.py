"""What the two benchmark binaries share (no flags here: either runs alone)."""

from __future__ import annotations

import tempfile

from dopamine_tff import configs
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
  return trainers.make_trainer(cfg, loaders.load(data_cfg), tempfile.mkdtemp())


def round_step(trainer):
  """A no-argument callable that runs the trainer's next round (for timing)."""
  holder = {"state": trainer.initial_state(), "r": 0}

  def step():
    r = holder["r"]
    holder["state"] = trainer.run(holder["state"], trainer.plan(r), r).state
    holder["r"] += 1

  return step
