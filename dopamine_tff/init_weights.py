"""Starting weights from a file: public pretraining, as the original Dopamine does.

The original fine-tunes ImageNet SqueezeNet weights; a hospital team starts
from public weights too. ``--init_weights=PATH`` loads them for every setting
and both runtimes:

* ``.npz``: our trainable variables in order, as a run's final_weights.npz or
  experiments/pretrain_public.py writes them (arr_0, arr_1, ...);
* ``.weights.h5`` or ``.keras``: Keras weights of our model architecture.

Shapes are checked variable by variable; the first mismatch is named. With
``reinit_head`` a classifier head of another class count (the last layer with
weights) is drawn afresh from ``--seed`` instead. The file's SHA-256 goes into
hparams.json, summary.json and the run identity (resume refuses other weights).

The starting weights are public: they are an input of the DP mechanism, not
an output, so the guarantee covers the private data only if the weights were
made without it (docs/pretraining.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile

import numpy as np

from dopamine_tff import models


class InitWeightsError(ValueError):
  """The weights file is missing, unreadable or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where a run's starting weights came from (written to summary.json)."""

  path: str | None
  sha256: str | None
  head_reinitialised: bool = False

  def to_json(self) -> dict:
    if self.path is None:
      return {"source": "random", "seed_drawn": True}
    return {
      "source": "file",
      "path": self.path,
      "sha256": self.sha256,
      "head_reinitialised": self.head_reinitialised,
    }


def expected_normalization(path: str) -> str | None:
  """The input scaling the weights in `path` were made for, from `path`.json
  (written by experiments/pretrain_public.py and convert_squeezenet.py); None
  when there is no such record."""
  import json

  try:
    with open(path + ".json") as f:
      return json.load(f).get("normalization")
  except (OSError, ValueError):
    return None


def sha256_of(path: str) -> str:
  """Hex SHA-256 of a file's bytes (InitWeightsError when it cannot be read)."""
  try:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
  except OSError as e:
    raise InitWeightsError(f"--init_weights={path}: cannot read it ({e.strerror})") from None


def _read(path: str, model) -> list[np.ndarray]:
  """The arrays stored in `path`, in our variable order."""
  if path.endswith(".npz"):
    try:
      with np.load(path) as f:
        names = sorted(f.files, key=lambda n: int(n.split("_")[1]) if n.startswith("arr_") else -1)
        return [f[n] for n in names]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      why = str(e) or type(e).__name__
      raise InitWeightsError(
        f"--init_weights={path}: not a readable .npz, truncated or corrupt ({why})"
      ) from None
  if path.endswith((".weights.h5", ".keras")):
    try:
      if path.endswith(".keras"):
        import tensorflow as tf

        loaded = tf.keras.models.load_model(path, compile=False)
        model = loaded
      else:
        model.load_weights(path)
      # Every layer's weights, frozen or not, in models.variables' order.
      return [v.numpy() for layer in model.layers for v in layer.weights]
    except (OSError, ValueError) as e:
      first = str(e).splitlines()[0][:300]
      raise InitWeightsError(f"--init_weights={path}: Keras cannot load it: {first}") from None
  raise InitWeightsError(f"--init_weights={path}: expected a .npz, .weights.h5 or .keras file")


def _head_size(model) -> int:
  """How many trainable variables the last layer with weights holds."""
  for layer in reversed(model.layers):
    if layer.trainable_weights:
      return len(layer.trainable_weights)
  return 0


def load(
  path: str, name: str, input_shape, num_classes: int, *, seed: int, reinit_head: bool = False
) -> tuple[list[np.ndarray], Provenance]:
  """The starting weights in `path` for model `name`, checked, and their provenance."""
  if not os.path.isfile(path):
    raise InitWeightsError(f"--init_weights={path}: no such file")
  digest = sha256_of(path)
  model = models.build(name, input_shape, num_classes)
  arrays = _read(path, model)
  wanted = [(v.name, tuple(v.shape)) for v in model.trainable_variables]
  fresh = models.initial_weights(name, input_shape, num_classes, seed)
  head = _head_size(model)
  reinit = False
  if len(arrays) != len(wanted):
    raise InitWeightsError(
      f"--init_weights={path}: {len(arrays)} arrays, but --model={name} has {len(wanted)} "
      "trainable variables"
    )
  out = []
  for i, (array, (var, shape)) in enumerate(zip(arrays, wanted)):
    if tuple(array.shape) == shape:
      if not np.all(np.isfinite(array)):
        raise InitWeightsError(
          f"--init_weights={path}: variable {i} ({var}) holds non-finite values (NaN or inf); "
          "every round would be abandoned as not encodable"
        )
      out.append(np.asarray(array, np.float32))
      continue
    if reinit_head and i >= len(wanted) - head:
      reinit = True
      out.append(fresh[i])
      continue
    hint = " (a head of another class count: pass --reinit_head)" if i >= len(wanted) - head else ""
    raise InitWeightsError(
      f"--init_weights={path}: variable {i} ({var}) has shape {tuple(array.shape)}, the model "
      f"needs {shape}{hint}"
    )
  return out, Provenance(path, digest, reinit)


def starting_weights(cfg, input_shape, num_classes) -> tuple[list[np.ndarray], Provenance]:
  """The run's starting weights: `cfg.init_weights` or drawn from `cfg.seed`."""
  if cfg.init_weights:
    return load(
      cfg.init_weights,
      cfg.model,
      input_shape,
      num_classes,
      seed=cfg.seed,
      reinit_head=cfg.reinit_head,
    )
  weights = models.initial_weights(cfg.model, input_shape, num_classes, cfg.seed)
  return weights, Provenance(None, None)
