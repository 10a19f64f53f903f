"""torchvision SqueezeNet 1.1 state dicts into our Keras SqueezeNet (issue 19).

No torch here: the state dict is built with torchvision's exact key names and
shapes, and torchvision's layers are recomputed in numpy (NCHW, OIHW, its
padding rules), independently of the conversion code.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dopamine_tff import models
from dopamine_tff import squeezenet_import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torchvision.models.squeezenet1_1: features index -> Fire(inplanes, squeeze, expand, expand)
TV_FIRES = {
  3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128),
  9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256),
}  # fmt: skip


def torchvision_state(num_classes=1000, seed=0):
  rng = np.random.default_rng(seed)
  w = lambda *shape: rng.normal(0, 0.1, shape).astype(np.float32)  # noqa: E731
  sd = {"features.0.weight": w(64, 3, 3, 3), "features.0.bias": w(64)}
  for i, (inp, sq, ex) in TV_FIRES.items():
    sd.update({
      f"features.{i}.squeeze.weight": w(sq, inp, 1, 1), f"features.{i}.squeeze.bias": w(sq),
      f"features.{i}.expand1x1.weight": w(ex, sq, 1, 1), f"features.{i}.expand1x1.bias": w(ex),
      f"features.{i}.expand3x3.weight": w(ex, sq, 3, 3), f"features.{i}.expand3x3.bias": w(ex),
    })  # fmt: skip
  sd["classifier.1.weight"] = w(num_classes, 512, 1, 1)
  sd["classifier.1.bias"] = w(num_classes)
  return sd


def _conv_nchw(x, weight, bias, stride=1, pad=0):
  """PyTorch's Conv2d on NCHW with OIHW weights, in numpy."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  o, _, kh, kw = weight.shape
  h = (x.shape[2] - kh) // stride + 1
  wd = (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], o, h, wd), np.float64)
  for dy in range(kh):
    for dx in range(kw):
      patch = x[:, :, dy : dy + stride * h : stride, dx : dx + stride * wd : stride]
      out += np.einsum("nchw,oc->nohw", patch, weight[:, :, dy, dx])
  return out + bias[None, :, None, None]


def _fire_nchw(x, sd, i):
  relu = lambda a: np.maximum(a, 0)  # noqa: E731
  s = relu(_conv_nchw(x, sd[f"features.{i}.squeeze.weight"], sd[f"features.{i}.squeeze.bias"]))
  e1 = relu(_conv_nchw(s, sd[f"features.{i}.expand1x1.weight"], sd[f"features.{i}.expand1x1.bias"]))
  e3 = relu(
    _conv_nchw(s, sd[f"features.{i}.expand3x3.weight"], sd[f"features.{i}.expand3x3.bias"], pad=1)
  )
  return np.concatenate([e1, e3], axis=1)


def test_every_torchvision_tensor_lands_transposed_in_its_layer():
  sd = torchvision_state()
  weights, report = squeezenet_import.convert(sd, (32, 32, 3), 1000)
  model = models.build("squeezenet", (32, 32, 3), 1000)
  assert report["head_kept"] and report["keys_used"] == len(sd) == len(weights) == 52
  by_name = {v.name: w for v, w in zip(model.trainable_variables, weights)}
  np.testing.assert_array_equal(
    by_name["conv1/kernel:0"], sd["features.0.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    by_name["fire9_e3x3/kernel:0"], sd["features.12.expand3x3.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(by_name["fire4_squeeze/bias:0"], sd["features.6.squeeze.bias"])
  np.testing.assert_array_equal(by_name["conv10/bias:0"], sd["classifier.1.bias"])


def test_fire_modules_and_head_compute_what_torchvision_computes():
  """Where the two are defined alike (every fire module, the head)."""
  import tensorflow as tf

  sd = torchvision_state(num_classes=5)
  weights, report = squeezenet_import.convert(sd, (32, 32, 3), 5)
  assert report["head_kept"]
  model = models.build("squeezenet", (32, 32, 3), 5)
  model.set_weights(weights)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 128)).astype(np.float32)  # NHWC input of fire4 (index 6)
  sub = tf.keras.Model(
    model.get_layer("fire4_squeeze").input, model.get_layer("fire4_concat").output
  )
  ours = sub(x).numpy()
  ref = _fire_nchw(x.transpose(0, 3, 1, 2).astype(np.float64), sd, 6).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  # The head: 1x1 conv, ReLU, global average pool (torchvision's classifier).
  z = rng.normal(size=(2, 2, 2, 512)).astype(np.float32)
  head = tf.keras.Model(model.get_layer("conv10").input, model.output)
  ref = np.maximum(
    _conv_nchw(
      z.transpose(0, 3, 1, 2).astype(np.float64), sd["classifier.1.weight"], sd["classifier.1.bias"]
    ),
    0,
  ).mean(axis=(2, 3))
  np.testing.assert_allclose(head(z).numpy(), ref, rtol=1e-4, atol=1e-4)


def test_an_imagenet_head_is_replaced_for_five_classes_and_bad_dicts_are_named():
  weights, report = squeezenet_import.convert(torchvision_state(), (32, 32, 3), 5, seed=2)
  fresh = models.initial_weights("squeezenet", (32, 32, 3), 5, seed=2)
  assert not report["head_kept"]
  np.testing.assert_array_equal(weights[-2], fresh[-2])
  sd = torchvision_state()
  del sd["features.7.expand1x1.weight"]
  with pytest.raises(ValueError, match="no weights for our fire5_e1x1/kernel"):
    squeezenet_import.convert(sd, (32, 32, 3), 5)
  sd = torchvision_state()
  sd["features.3.squeeze.weight"] = sd["features.3.squeeze.weight"][:8]
  with pytest.raises(ValueError, match="fire2_squeeze/kernel"):
    squeezenet_import.convert(sd, (32, 32, 3), 5)


def test_the_converter_binary_writes_an_init_weights_file(tmp_path):
  src = tmp_path / "squeezenet1_1.npz"
  np.savez(src, **torchvision_state())
  out = tmp_path / "init.npz"
  cmd = [
    sys.executable,
    "-m",
    "experiments.convert_squeezenet",
    f"--input={src}",
    f"--output={out}",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "converted 52 weight tensors (new 5-class head)" in proc.stdout
  report = json.loads((tmp_path / "init.npz.json").read_text())
  assert report["preprocessing"]["imagenet_mean"] == [0.485, 0.456, 0.406]
  from dopamine_tff import init_weights

  loaded, _ = init_weights.load(str(out), "squeezenet", (32, 32, 3), 5, seed=0)
  assert len(loaded) == 52
