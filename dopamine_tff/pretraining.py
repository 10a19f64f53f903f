"""Public pretraining: the non-private model on public data, as starting weights.

``pretrain`` trains setting C (plain SGD, one epoch a round) on a public data
set and writes our variables as an .npz for ``--init_weights``
(dopamine_tff/init_weights.py), with a JSON of its provenance beside it.
``cached`` does it once per configuration: the file is named by the SHA-256
of the configuration, so a preset's five settings and every seed start from
the same weights and a rerun reuses them.

The public data is outside the privacy guarantee; it must really be public
and disjoint from the hospitals' data (docs/pretraining.md).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import json
import os
import shutil

from dopamine_tff import configs
from dopamine_tff import init_weights
from dopamine_tff.data import loaders


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """What to pretrain on and how.

  Attributes:
    data: the public data (K = 1; its test share is the held-out public set).
    model: that of the private runs.
    epochs, batch_size, learning_rate, momentum, lr_schedule: plain SGD.
    seed: the split's, the initial weights' and the shuffles' seed.
  """

  data: loaders.DataConfig
  model: str = "small_cnn"
  epochs: int = 10
  batch_size: int = 32
  learning_rate: float = 0.02
  momentum: float = 0.9
  lr_schedule: str = "constant"
  seed: int = 0

  def __post_init__(self):
    if self.data.num_hospitals != 1:
      raise ValueError(
        f"pretraining pools the public data: num_hospitals must be 1, got {self.data.num_hospitals}"
      )
    if self.epochs < 1:
      raise ValueError(f"epochs must be >= 1, got {self.epochs}")

  def fingerprint(self) -> str:
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain(cfg: PretrainConfig, output: str, log: Callable[[str], None] = print) -> dict:
  """Trains on the public set; writes `output` (.npz) and `output`.json; returns the latter."""
  # Imported here so that presets (which name a PretrainConfig) stay TensorFlow-free.
  from dopamine_tff.program import loop

  if not output.endswith(".npz"):
    raise ValueError(f"pretraining output {output}: must end in .npz")
  train = configs.TrainConfig(
    setting="c",
    rounds=cfg.epochs,
    eval_every=cfg.epochs,
    model=cfg.model,
    batch_size=cfg.batch_size,
    learning_rate=cfg.learning_rate,
    momentum=cfg.momentum,
    lr_schedule=cfg.lr_schedule,
    seed=cfg.seed,
    runtime="in_process",
    # Public data has nothing to hide: the shuffles come from the seed, so the
    # same configuration gives the same weights (and the cache name holds).
    insecure_seeded_noise=True,
  )
  data = loaders.load(dataclasses.replace(cfg.data, seed=cfg.seed))
  run_dir = output + ".run"
  options = configs.LoopOptions(overwrite=True, tensorboard=False, checkpoint_every=0)
  summary = loop.run(train, data, run_dir, data_config=cfg.data, options=options, log=log)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  tmp = output + ".tmp.npz"
  shutil.copyfile(os.path.join(run_dir, "final_weights.npz"), tmp)
  os.replace(tmp, output)
  provenance = {
    "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
    "dataset": data.name,
    "num_train_examples": data.num_train,
    "image_size": cfg.data.resolved_image_size,
    "public_test_accuracy": summary["final_test_accuracy"],
    "public_majority_accuracy": summary["majority_class_accuracy"],
    "normalization": cfg.data.normalization,  # the input scaling these weights expect
    "randomness": "seeded from the configuration (public data: nothing is private)",
    "sha256": init_weights.sha256_of(output),
  }
  with open(output + ".json", "w") as f:
    json.dump(provenance, f, indent=2, sort_keys=True)
  return provenance


def cached(cfg: PretrainConfig, directory: str, log: Callable[[str], None] = print) -> str:
  """The weights of `cfg` under `directory`, pretrained only if not there yet."""
  path = os.path.join(directory, f"public_{cfg.fingerprint()}.npz")
  if os.path.isfile(path) and os.path.isfile(path + ".json"):
    log(f"public weights reused: {path}")
    return path
  provenance = pretrain(cfg, path, log)
  log(
    f"public weights: {path} ({provenance['dataset']}, held-out public accuracy "
    f"{provenance['public_test_accuracy']:.4f})"
  )
  return path
