r"""Converts torchvision's SqueezeNet 1.1 weights into an --init_weights file.

  python -m experiments.convert_squeezenet --input=squeezenet1_1.npz \
      --output=runs/imagenet/squeezenet1_1.npz --num_classes=5

--input is a state dict exported to .npz (two lines where torch is installed;
see dopamine_tff/squeezenet_import.py), or the .pth itself when torch is
installed here. The 1000-class ImageNet head is replaced by a fresh 5-class
one (drawn from --seed) unless --num_classes=1000. Writes <output> and
<output>.json (source SHA-256, head kept or not, the preprocessing the weights
expect and what differs from ours).
"""

from __future__ import annotations

import json
import os

from absl import flags

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import init_weights
from dopamine_tff import squeezenet_import
from experiments import cli_lib

flags.DEFINE_string("input", None, "torchvision state dict: .npz export or .pth (needs torch).")
flags.DEFINE_string("output", "runs/imagenet/squeezenet1_1.npz", "The --init_weights file (.npz).")
flags.DEFINE_integer("num_classes", 5, "Classes of the private task (1000 keeps ImageNet's head).")
flags.DEFINE_integer("seed", 0, "Seed of a fresh head.")


def convert(values) -> dict:
  if not values["input"]:
    raise ValueError("--input: the torchvision state dict to convert is required")
  if not values["output"].endswith(".npz"):
    raise ValueError(f"--output={values['output']}: must end in .npz")
  state = squeezenet_import.load_state_dict(values["input"])
  weights, report = squeezenet_import.convert(
    state, (64, 64, 3), values["num_classes"], seed=values["seed"]
  )
  os.makedirs(os.path.dirname(os.path.abspath(values["output"])), exist_ok=True)
  import numpy as np

  np.savez(values["output"], *weights)
  report.update(
    source=values["input"],
    source_sha256=init_weights.sha256_of(values["input"]),
    sha256=init_weights.sha256_of(values["output"]),
    padding_differs="torchvision: conv1 unpadded, ceil-mode pools; ours: 'same' padding",
  )
  with open(values["output"] + ".json", "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  return report


def main(argv):
  del argv
  values = flags.FLAGS.flag_values_dict()
  with cli_lib.one_line_errors("convert_squeezenet", "run it again"):
    report = convert(values)
  head = "kept" if report["head_kept"] else f"new {values['num_classes']}-class head"
  print(f"converted {report['keys_used']} weight tensors ({head}) -> {values['output']}")


if __name__ == "__main__":
  cli_lib.run(main, "convert_squeezenet")
