"""Hyper-parameters of the reproduction presets (Figure 1 of the paper).

* ``paper``: the published settings (../shared/DOPAMINE.md): SqueezeNet 1.1 at
  224x224 on APTOS 2019, 10 IID hospitals, 100 epochs, delta 1e-4, 5 seeds.
  For a GPU host with the APTOS files.
* ``cpu``: the built-in synthetic fundus images at 32x32 with the small CNN;
  about 20 epochs per setting, 3 seeds; tens of minutes on 2 CPU cores.
* ``smoke``: a tiny run of every setting for the test suite.
"""

from __future__ import annotations

import dataclasses

from dopamine_tff import configs
from dopamine_tff.data import loaders

PRESETS = ("smoke", "cpu", "paper")
APTOS_TRAIN = 2931  # the paper's training split


@dataclasses.dataclass(frozen=True)
class Preset:
  """A data configuration, a seed count and one TrainConfig per setting.

  The paper preset names its data folder APTOS_DIR; reproduce_paper requires
  --data_dir for it.
  """

  name: str
  data: loaders.DataConfig
  seeds: int
  settings: dict  # setting -> configs.TrainConfig (seed 0)


def _paper() -> Preset:
  n = APTOS_TRAIN
  base = dict(model="squeezenet", momentum=0.9, delta=1e-4, eval_every=1)
  q_cdp = 50 / n
  settings = {
    "c": configs.TrainConfig(setting="c", rounds=100, batch_size=50, learning_rate=0.001, **base),
    "cdp": configs.TrainConfig(
      setting="cdp",
      rounds=round(100 / q_cdp),
      sampling_prob=q_cdp,
      noise_multiplier=1.0,
      l2_norm_clip=2.0,
      learning_rate=0.001,
      **dict(base, eval_every=59),
    ),
    "f": configs.TrainConfig(
      setting="f",
      rounds=100,
      local_epochs=5,
      client_fraction=0.5,
      batch_size=50,
      learning_rate=0.002,
      **base,
    ),
    "fpdp": configs.TrainConfig(
      setting="fpdp",
      rounds=100,
      local_epochs=5,
      client_fraction=0.5,
      batch_size=50,
      noise_multiplier=2.0,
      l2_norm_clip=2.0,
      learning_rate=0.002,
      **base,
    ),
    "fscdp": configs.TrainConfig(
      setting="fscdp",
      rounds=round(100 / 0.03425),
      sampling_prob=0.03425,
      noise_multiplier=1.15,
      l2_norm_clip=2.0,
      learning_rate=0.002,
      **dict(base, eval_every=29),
    ),
  }
  data = loaders.DataConfig(
    dataset="aptos",
    image_size=224,
    num_hospitals=10,
    test_fraction=731 / 3662,
    data_dir="APTOS_DIR",
  )
  return Preset("paper", data, 5, settings)


def _cpu() -> Preset:
  base = dict(model="small_cnn", momentum=0.9, delta=1e-4, l2_norm_clip=1.0)
  settings = {
    "c": configs.TrainConfig(setting="c", rounds=20, batch_size=32, learning_rate=0.02, **base),
    "cdp": configs.TrainConfig(
      setting="cdp",
      rounds=400,
      sampling_prob=0.05,
      noise_multiplier=0.8,
      learning_rate=0.1,
      eval_every=20,
      **base,
    ),
    "f": configs.TrainConfig(
      setting="f",
      rounds=20,
      local_epochs=2,
      client_fraction=0.5,
      batch_size=16,
      learning_rate=0.02,
      **base,
    ),
    "fpdp": configs.TrainConfig(
      setting="fpdp",
      rounds=40,
      local_epochs=1,
      client_fraction=0.5,
      batch_size=16,
      noise_multiplier=0.8,
      learning_rate=0.05,
      eval_every=2,
      **base,
    ),
    "fscdp": configs.TrainConfig(
      setting="fscdp",
      rounds=400,
      sampling_prob=0.05,
      noise_multiplier=0.8,
      learning_rate=0.1,
      eval_every=20,
      **base,
    ),
  }
  data = loaders.DataConfig(dataset="synthetic", num_examples=3000, image_size=32, num_hospitals=10)
  return Preset("cpu", data, 3, settings)


def _smoke() -> Preset:
  base = dict(model="small_cnn", momentum=0.9, delta=1e-4, l2_norm_clip=1.0, learning_rate=0.05)
  settings = {
    "c": configs.TrainConfig(setting="c", rounds=2, batch_size=16, **base),
    "cdp": configs.TrainConfig(
      setting="cdp", rounds=4, sampling_prob=0.2, noise_multiplier=1.0, eval_every=2, **base
    ),
    "f": configs.TrainConfig(
      setting="f", rounds=2, local_epochs=1, client_fraction=0.5, batch_size=16, **base
    ),
    "fpdp": configs.TrainConfig(
      setting="fpdp",
      rounds=2,
      local_epochs=1,
      client_fraction=0.5,
      batch_size=16,
      noise_multiplier=1.0,
      **base,
    ),
    "fscdp": configs.TrainConfig(
      setting="fscdp", rounds=4, sampling_prob=0.2, noise_multiplier=1.0, eval_every=2, **base
    ),
  }
  data = loaders.DataConfig(dataset="synthetic", num_examples=160, image_size=16, num_hospitals=4)
  return Preset("smoke", data, 2, settings)


def get(name: str) -> Preset:
  """The preset of that name. Raises ValueError for an unknown one."""
  if name == "paper":
    return _paper()
  if name == "cpu":
    return _cpu()
  if name == "smoke":
    return _smoke()
  raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
