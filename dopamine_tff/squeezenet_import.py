"""torchvision's SqueezeNet 1.1 weights in our Keras SqueezeNet (ImageNet pretraining).

The original Dopamine fine-tunes ``torchvision.models.squeezenet1_1(pretrained=True)``.
This maps a torchvision state dict onto dopamine_tff/models.py's layers:

| torchvision | ours |
|---|---|
| features.0 (conv 3x3/2) | conv1 |
| features.{3,4,6,7,9,10,11,12}.{squeeze,expand1x1,expand3x3} | fire{2..9}_{squeeze,e1x1,e3x3} |
| classifier.1 (1x1 conv, 1000 classes) | conv10 (the head) |

Kernels go from PyTorch's OIHW to Keras's HWIO; the fire modules concatenate
[expand1x1, expand3x3] in both. The state dict can come without torch: export
it once where torch is installed,

    sd = torchvision.models.squeezenet1_1(weights="IMAGENET1K_V1").state_dict()
    numpy.savez("squeezenet1_1.npz", **{k: v.numpy() for k, v in sd.items()})

or, with torch installed here, pass the ``.pth`` file itself.

Where the two networks differ (measured in tests/squeezenet_import_test.py):
* padding: torchvision's conv1 is unpadded and its pools use ceil_mode; ours
  pad 'same' so that 32x32 and 64x64 inputs work. The fire modules and the
  head compute the same function; the whole network does not (different
  spatial sizes after conv1), so ImageNet features transfer approximately;
* input scale: ImageNet weights expect (x - mean) / std per channel with
  ImageNet's mean and std; our loaders give [-1, 1] unless
  ``--normalization=imagenet``. The converted weights' .json records
  ``"normalization": "imagenet"`` and a run refuses them with other scaling.
"""

from __future__ import annotations

import numpy as np

from dopamine_tff import models

FIRES = {3: 2, 4: 3, 6: 4, 7: 5, 9: 6, 10: 7, 11: 8, 12: 9}  # torchvision index -> ours
PARTS = {"squeeze": "squeeze", "expand1x1": "e1x1", "expand3x3": "e3x3"}
PREPROCESSING = {
  "weights_expect": "ImageNet: RGB in [0, 1], then (x - mean) / std",
  "imagenet_mean": [0.485, 0.456, 0.406],
  "imagenet_std": [0.229, 0.224, 0.225],
  "dopamine_tff_loaders_give": "RGB scaled to [-1, 1]",
}


def keras_layer(torch_key: str) -> tuple[str, str] | None:
  """(our layer name, 'kernel' or 'bias') of a torchvision key; None for no weights."""
  parts = torch_key.split(".")
  kind = {"weight": "kernel", "bias": "bias"}.get(parts[-1])
  if kind is None:
    return None
  if parts[0] == "features" and parts[1] == "0":
    return "conv1", kind
  if parts[0] == "features" and int(parts[1]) in FIRES and parts[2] in PARTS:
    return f"fire{FIRES[int(parts[1])]}_{PARTS[parts[2]]}", kind
  if parts[0] == "classifier" and parts[1] == "1":
    return "conv10", kind
  return None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision state dict from an .npz export, or a .pth with torch installed."""
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  if path.endswith((".pth", ".pt")):
    try:
      import torch
    except ImportError:
      raise ValueError(
        f"{path}: reading a .pth needs torch; export it to .npz where torch is installed "
        "(dopamine_tff/squeezenet_import.py shows the two lines)"
      ) from None
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu").items()}
  raise ValueError(f"{path}: expected an .npz export of the state dict or a .pth file")


def convert(
  state: dict[str, np.ndarray], input_shape, num_classes: int, *, seed: int = 0
) -> tuple[list[np.ndarray], dict]:
  """Our SqueezeNet's trainable variables from a torchvision state dict.

  The head (conv10) is kept when its class count matches `num_classes`, else
  drawn afresh from `seed`. Raises ValueError naming a missing or misshapen key.
  Returns (variables in our order, a report: head kept, keys used).
  """
  model = models.build("squeezenet", input_shape, num_classes)
  fresh = models.initial_weights("squeezenet", input_shape, num_classes, seed)
  mapped = {}
  for key, value in state.items():
    target = keras_layer(key)
    if target is not None:
      value = np.asarray(value, np.float32)
      mapped[target] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  out, head_kept = [], True
  for i, var in enumerate(model.trainable_variables):
    layer, kind = var.name.split("/")[0], var.name.split("/")[1].split(":")[0]
    if (layer, kind) not in mapped:
      raise ValueError(f"the state dict has no weights for our {layer}/{kind}")
    value = mapped[layer, kind]
    if layer == "conv10" and value.shape != tuple(var.shape):
      head_kept = False
      out.append(fresh[i])
      continue
    if value.shape != tuple(var.shape):
      raise ValueError(
        f"{layer}/{kind}: the state dict gives {value.shape}, ours is {tuple(var.shape)}"
      )
    out.append(value)
  report = {"head_kept": head_kept, "keys_used": len(mapped), "preprocessing": PREPROCESSING}
  return out, dict(report, normalization="imagenet")
