"""Test helper: APTOS-format folders (train.csv and images) written on the fly."""

import os
import pathlib

import numpy as np
from PIL import Image


def write_aptos(root, rows, sizes=None):
  """Writes train.csv and one random PNG per (id_code, diagnosis) row under root."""
  os.makedirs(os.path.join(root, "train_images"), exist_ok=True)
  rng = np.random.default_rng(0)
  with open(os.path.join(root, "train.csv"), "w") as f:
    f.write("id_code,diagnosis\n")
    for i, (code, diag) in enumerate(rows):
      f.write(f"{code},{diag}\n")
      h, w = (sizes or [(40 + i, 50 + 2 * i)] * len(rows))[i]
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        os.path.join(root, "train_images", f"{code}.png")
      )
  return root


def with_columns(aptos_dir, **columns):
  """Adds columns (name -> value per row index) to the fixture's train.csv."""
  path = os.path.join(aptos_dir, "train.csv")
  lines = pathlib.Path(path).read_text().splitlines()
  out = [lines[0] + "".join("," + c for c in columns)]
  for i, line in enumerate(lines[1:]):
    out.append(line + "".join(f",{fn(i)}" for fn in columns.values()))
  with open(path, "w") as f:
    f.write("\n".join(out) + "\n")
