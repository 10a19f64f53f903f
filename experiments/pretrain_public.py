r"""Pretrains the model on PUBLIC data and writes weights for --init_weights.

  python -m experiments.pretrain_public --output=runs/public/weights.npz
  python -m experiments.run_experiment --setting=fscdp \
      --init_weights=runs/public/weights.npz ...

Trains without privacy (setting C: plain SGD, one epoch a round, on the pooled
public set) and writes <output> (our variables, in order) beside
<output>.json (the source, its size, the held-out public accuracy and the
file's SHA-256), plus the run's own files under <output>.run/. The default
source is the built-in one (--dataset=synthetic_public: the synthetic fundus
renderer through another camera, with EyePACS's grade balance); on real data
point it at a public set (--dataset=eyepacs --data_dir=..., or an APTOS-format
folder). The public data is outside the privacy guarantee: use data that
really is public, never the hospitals'.
"""

from __future__ import annotations

from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import configs
from dopamine_tff import models
from dopamine_tff import pretraining
from dopamine_tff.data import loaders
from experiments import cli_lib
from experiments import flags_lib

flags.DEFINE_enum("dataset", "synthetic_public", list(loaders.DATASETS), "Public data source.")
flags.DEFINE_string("data_dir", None, "Folder of a real public set (aptos format or eyepacs).")
flags.DEFINE_integer("num_examples", 6000, "Examples (synthetic) or a cap on real data (0: all).")
flags.DEFINE_integer("image_size", 32, "Image side: that of the private runs.")
flags.DEFINE_enum("model", "small_cnn", list(models.MODELS), "Model: that of the private runs.")
flags.DEFINE_integer("epochs", 10, "Epochs over the public set.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_float("learning_rate", 0.02, "Learning rate.")
flags.DEFINE_float("momentum", 0.9, "Momentum.")
flags.DEFINE_enum("lr_schedule", "constant", list(configs.LR_SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_integer("seed", 0, "Seed of the split and the initial weights.")
flags.DEFINE_enum(
  "normalization", "minus_one_one", list(loaders.NORMALIZATIONS), "Pixel scaling (recorded)."
)
_OUTPUT = flags.DEFINE_string("output", "runs/public/weights.npz", "The weights file (.npz).")


def _config(values) -> pretraining.PretrainConfig:
  data = flags_lib.config_from(loaders.DataConfig, values, num_hospitals=1, test_fraction=0.1)
  return flags_lib.config_from(pretraining.PretrainConfig, values, data=data)


def main(argv):
  del argv
  values = flags.FLAGS.flag_values_dict()
  with cli_lib.one_line_errors("pretrain_public", "run it again"):
    provenance = pretraining.pretrain(_config(values), values["output"], log=logging.info)
  print(
    f"public weights: {_OUTPUT.value} ({provenance['dataset']}, "
    f"{provenance['num_train_examples']} examples, held-out public accuracy "
    f"{provenance['public_test_accuracy']:.4f}, sha256 {provenance['sha256'][:12]})"
  )


if __name__ == "__main__":
  cli_lib.run(main, "pretrain_public")
