"""Hyper-parameters of the reproduction presets (Figure 1 of the paper).

* ``paper``: the published settings (../shared/DOPAMINE.md): SqueezeNet 1.1 at
  224x224 on APTOS 2019, 10 IID hospitals, 100 epochs, delta 1e-4, 5 seeds.
  For a GPU host with the APTOS files.
* ``cpu``: the built-in synthetic fundus images at 32x32 with the small CNN;
  20 epochs per setting, 5 seeds, hyper-parameters from experiments/tune.py;
  under an hour on 2 CPU cores.
* ``smoke``: a tiny run of every setting for the test suite.
"""

from __future__ import annotations

import dataclasses

from dopamine_tff import configs
from dopamine_tff import pretraining
from dopamine_tff.data import loaders

PRESETS = ("smoke", "smoke_pretrained", "cpu", "cpu_pretrained", "paper", "paper_pretrained")
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
  # Public pretraining every setting starts from (None: random weights).
  pretrain: pretraining.PretrainConfig | None = None
  # What the user must pass as --init_weights (None: nothing): a preset whose
  # public weights cannot be made here (ImageNet SqueezeNet 1.1).
  needs_init_weights: str | None = None


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
      secure_aggregation="secagg",  # Dopamine's masked sum (issue 21)
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
  """Chosen by experiments/tune.py --preset=cpu --trials=4 (results/tune_cpu/search.md):
  the best of 4 seeded draws per setting from dopamine_tff/tuning.py's grid, scored on a
  validation split, every private setting at epsilon 10.4 and delta 1e-4 over 20 epochs.
  Sigma is recalibrated here for the full training data (the search used 80 % of it):
  0.963 for q = 0.1 and 200 steps (CDP, FSCDP); 0.9289 for FPDP's busiest hospital
  (240 images, B = 16, 40 rounds, seeds 0-4). Every private run also stops at 10.4.
  """
  base = dict(model="small_cnn", momentum=0.9, delta=1e-4)
  dp_sgd = dict(
    rounds=200,
    sampling_prob=0.1,
    noise_multiplier=0.963,
    l2_norm_clip=2.0,
    learning_rate=0.1,
    ema_decay=0.95,
    target_epsilon=10.4,
    eval_every=10,
    **base,
  )
  settings = {
    # search trial 0 of C: 80.29 % validation accuracy
    "c": configs.TrainConfig(
      setting="c",
      rounds=20,
      batch_size=64,
      learning_rate=0.02,
      lr_schedule="cosine",
      ema_decay=0.5,
      **base,
    ),
    # trial 0 of CDP (and of FSCDP, which draws CDP's trials): 68.13 % / 62.47 %
    "cdp": configs.TrainConfig(setting="cdp", **dp_sgd),
    # trial 1 of F: 80.71 %
    "f": configs.TrainConfig(
      setting="f",
      rounds=40,
      local_epochs=1,
      client_fraction=0.5,
      batch_size=16,
      learning_rate=0.02,
      **base,
    ),
    # trial 0 of FPDP: all four trials stayed at the majority rate (48.85 %); the
    # first best is kept by the rule.
    "fpdp": configs.TrainConfig(
      setting="fpdp",
      rounds=40,
      local_epochs=1,
      client_fraction=0.5,
      batch_size=16,
      noise_multiplier=0.9289,
      l2_norm_clip=2.0,
      learning_rate=0.05,
      lr_schedule="cosine",
      ema_decay=0.5,
      target_epsilon=10.4,
      eval_every=2,
      **base,
    ),
    "fscdp": configs.TrainConfig(setting="fscdp", secure_aggregation="secagg", **dp_sgd),
  }
  data = loaders.DataConfig(dataset="synthetic", num_examples=3000, image_size=32, num_hospitals=10)
  return Preset("cpu", data, 5, settings)


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
      setting="fscdp",
      secure_aggregation="secagg",
      rounds=4,
      sampling_prob=0.2,
      noise_multiplier=1.0,
      eval_every=2,
      **base,
    ),
  }
  data = loaders.DataConfig(dataset="synthetic", num_examples=160, image_size=16, num_hospitals=4)
  return Preset("smoke", data, 2, settings)


def _pretrained(
  preset: Preset, *, epochs: int, num_examples: int, learning_rate: float = 0.02
) -> Preset:
  """`preset` with every setting starting from weights pretrained on the built-in public
  source (synthetic_public: another camera, EyePACS's grade balance; disjoint from the
  private synthetic set). The settings' hyper-parameters are the preset's own; a
  caller may retune them for the pretrained start (_cpu_pretrained does)."""
  public = dataclasses.replace(
    preset.data, dataset="synthetic_public", num_examples=num_examples, num_hospitals=1,
    test_fraction=0.1,
  )  # fmt: skip
  model = preset.settings["c"].model
  pretrain = pretraining.PretrainConfig(
    public, model=model, epochs=epochs, learning_rate=learning_rate
  )
  return dataclasses.replace(preset, name=f"{preset.name}_pretrained", pretrain=pretrain)


def _cpu_pretrained() -> Preset:
  """The cpu preset from public weights, retuned for that start.

  The pretraining recipe was chosen on the public source's own held-out split
  (never private data): of 13 recipes, lr 0.01 for 20 epochs scored best
  (79.8 % against a majority rate of 69.7 %; docs/pretraining.md).
  The settings were retuned from those weights by experiments/tune.py
  --preset=cpu_pretrained --trials=4 (results/tune_cpu_pretrained/search.md):
  the best of 4 seeded draws per setting from tuning.PRETRAINED_SEARCH_SPACE
  (the from-scratch grid with smaller learning rates), scored on a validation
  split, every private setting at epsilon 10.4. Sigma is recalibrated for the
  full training data as in _cpu: 0.963 (CDP, FSCDP), 0.9289 (FPDP).
  """
  preset = _pretrained(_cpu(), epochs=20, num_examples=6000, learning_rate=0.01)
  s = preset.settings
  settings = {
    "c": dataclasses.replace(s["c"], ema_decay=0.0),  # trial 1 of C: 84.07 %
    "cdp": dataclasses.replace(s["cdp"], learning_rate=0.05),  # trial 0 of CDP: 81.13 %
    # trial 0 of F: 83.02 %
    "f": dataclasses.replace(s["f"], learning_rate=0.005, batch_size=32),
    # trial 0 of FPDP: 78.83 % (from scratch every FPDP trial stayed at the majority rate)
    "fpdp": dataclasses.replace(
      s["fpdp"], learning_rate=0.01, l2_norm_clip=1.0, ema_decay=0.0, lr_schedule="constant"
    ),
    # trial 0 of FSCDP (CDP's draws): 80.92 %
    "fscdp": dataclasses.replace(s["fscdp"], learning_rate=0.05),
  }
  return dataclasses.replace(preset, settings=settings)


def get(name: str) -> Preset:
  """The preset of that name. Raises ValueError for an unknown one."""
  if name == "paper":
    return _paper()
  if name == "cpu":
    return _cpu()
  if name == "cpu_pretrained":
    return _cpu_pretrained()
  if name == "paper_pretrained":
    # The original's start: torchvision's ImageNet SqueezeNet 1.1, its head
    # replaced; no download here, so the user converts it
    # (experiments/convert_squeezenet.py) and passes the file.
    return dataclasses.replace(
      _paper(),
      name="paper_pretrained",
      needs_init_weights="ImageNet SqueezeNet 1.1 converted by experiments/convert_squeezenet.py",
    )
  if name == "smoke_pretrained":
    return _pretrained(_smoke(), epochs=1, num_examples=200)
  if name == "smoke":
    return _smoke()
  raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
