"""Keras model builders: SqueezeNet 1.1 (the paper's model) and a small CNN.

Neither uses batch normalisation: DP-SGD needs each example's gradient to depend
on that example only, and batch statistics mix examples.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MODELS = ("small_cnn", "squeezenet")


def _conv(x, filters, kernel, name, activation, **kw):
  """Conv2D then its activation as a separate layer.

  Keeping the pre-activation output visible lets dopamine_tff/fast_clip.py read
  each layer's input and output gradient (per-example gradients without a
  per-example loop); the function computed is the same.
  """
  z = tf.keras.layers.Conv2D(filters, kernel, name=name, **kw)(x)
  return tf.keras.layers.Activation(activation, name=f"{name}_{activation}")(z)


def _fire(x, squeeze: int, expand: int, name: str):
  """SqueezeNet fire module: 1x1 squeeze, then parallel 1x1 and 3x3 expands."""
  s = _conv(x, squeeze, 1, f"{name}_squeeze", "relu")
  e1 = _conv(s, expand, 1, f"{name}_e1x1", "relu")
  e3 = _conv(s, expand, 3, f"{name}_e3x3", "relu", padding="same")
  return tf.keras.layers.Concatenate(name=f"{name}_concat")([e1, e3])


def squeezenet_v1_1(input_shape, num_classes: int = 5, dropout: float = 0.0) -> tf.keras.Model:
  """SqueezeNet 1.1 (Iandola et al. 2016) with a `num_classes` 1x1-conv head.

  Pools use 'same' padding so that small inputs (e.g. 32x32, 64x64) work.
  The paper's classifier has dropout 0.5; we default to 0 because dropout
  makes per-example gradients random (see README); pass `dropout` to enable it.
  """
  pool = lambda n: tf.keras.layers.MaxPool2D(3, 2, padding="same", name=n)  # noqa: E731
  inputs = tf.keras.Input(shape=input_shape)
  x = _conv(inputs, 64, 3, "conv1", "relu", strides=2, padding="same")
  x = pool("pool1")(x)
  x = _fire(x, 16, 64, "fire2")
  x = _fire(x, 16, 64, "fire3")
  x = pool("pool3")(x)
  x = _fire(x, 32, 128, "fire4")
  x = _fire(x, 32, 128, "fire5")
  x = pool("pool5")(x)
  for i, (s, e) in enumerate([(48, 192), (48, 192), (64, 256), (64, 256)], start=6):
    x = _fire(x, s, e, f"fire{i}")
  if dropout > 0:
    x = tf.keras.layers.Dropout(dropout)(x)
  x = _conv(x, num_classes, 1, "conv10", "relu")
  logits = tf.keras.layers.GlobalAveragePooling2D(name="logits")(x)
  return tf.keras.Model(inputs, logits, name="squeezenet_v1_1")


def small_cnn(input_shape, num_classes: int = 5) -> tf.keras.Model:
  """Three conv blocks (16/32/32 filters, tanh) and a dense head.

  tanh rather than ReLU: bounded activations keep gradients small under
  clipping (Papernot et al. 2021, "Tempered sigmoid activations").
  """
  inputs = tf.keras.Input(shape=input_shape)
  x = inputs
  for i, filters in enumerate((16, 32, 32)):
    x = _conv(x, filters, 3, f"conv{i}", "tanh", padding="same")
    x = tf.keras.layers.MaxPool2D(2, padding="same", name=f"pool{i}")(x)
  x = tf.keras.layers.Flatten()(x)
  x = tf.keras.layers.Dense(64, name="dense")(x)
  x = tf.keras.layers.Activation("tanh", name="dense_tanh")(x)
  logits = tf.keras.layers.Dense(num_classes, name="logits")(x)
  return tf.keras.Model(inputs, logits, name="small_cnn")


def build(name: str, input_shape, num_classes: int, trainable: str = "all") -> tf.keras.Model:
  """Builds a model by name, its layers before `trainable`'s first one frozen.

  Raises ValueError for an unknown name or `trainable` spec.
  """
  if name == "small_cnn":
    model = small_cnn(input_shape, num_classes)
  elif name == "squeezenet":
    model = squeezenet_v1_1(input_shape, num_classes)
  else:
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
  freeze(model, trainable)
  return model


# Which layers train (--trainable): every layer, the last layer with weights
# only, or one named layer and every layer after it (Keras' topological order).
TRAINABLE_HELP = "all, head, or from:<layer> (that layer and the ones after it)"


def layers_with_weights(model: tf.keras.Model) -> list[str]:
  return [layer.name for layer in model.layers if layer.weights]


def first_trainable(model: tf.keras.Model, spec: str) -> str:
  """The name of the first layer `spec` trains (ValueError naming the choices)."""
  names = layers_with_weights(model)
  if spec == "all":
    return names[0]
  if spec == "head":
    return names[-1]
  if spec.startswith("from:") and spec[5:] in names:
    return spec[5:]
  if spec.startswith("from:"):
    raise ValueError(
      f"trainable={spec}: {model.name} has no layer {spec[5:]!r} with weights; "
      f"its layers are {', '.join(names)}"
    )
  raise ValueError(f"trainable={spec!r}: expected {TRAINABLE_HELP}")


def freeze(model: tf.keras.Model, spec: str) -> None:
  """Sets ``trainable=False`` on every layer with weights before `spec`'s first one.

  A frozen layer gets no gradient (so no per-example work in the DP step and no
  noise: its weights stay exactly the starting ones); ``variables(model)``
  still lists every weight in the same order.
  """
  first = first_trainable(model, spec)
  names = layers_with_weights(model)
  frozen = set(names[: names.index(first)])
  for layer in model.layers:
    if layer.name in frozen:
      layer.trainable = False


def trainable_summary(name: str, input_shape, num_classes: int, spec: str) -> dict:
  """{'spec', 'first_layer', 'trainable_parameters', 'parameters'} of `spec` on a model."""
  model = build(name, input_shape, num_classes, spec)
  return {
    "spec": spec,
    "first_layer": first_trainable(model, spec),
    "trainable_parameters": count_params(model),
    "parameters": int(sum(np.prod(v.shape) for v in variables(model))),
  }


def frozen_mask(model: tf.keras.Model) -> tuple:
  """Per variable of ``variables(model)``: True where frozen; () when nothing is."""
  trains = {v.ref() for v in model.trainable_variables}
  mask = tuple(v.ref() not in trains for v in variables(model))
  return mask if any(mask) else ()


def variables(model: tf.keras.Model) -> list:
  """Every weight variable, frozen or not, in one fixed order: that of
  ``trainable_variables`` when nothing is frozen (the order of the state, the
  checkpoints and the weight files)."""
  return [v for layer in model.layers for v in layer.weights]


def scatter(model: tf.keras.Model, trainable_values) -> list:
  """A list over ``variables(model)``: `trainable_values` (in ``trainable_variables``
  order) where a variable trains, exact zeros where it is frozen."""
  values = {v.ref(): t for v, t in zip(model.trainable_variables, trainable_values, strict=True)}
  return [values.get(v.ref(), tf.zeros_like(v)) for v in variables(model)]


def initial_weights(name: str, input_shape, num_classes: int, seed: int) -> list[np.ndarray]:
  """Deterministic initial trainable weights for (model, shape, seed)."""
  tf.keras.utils.set_random_seed(seed)
  model = build(name, input_shape, num_classes)
  return [v.numpy() for v in model.trainable_variables]


def count_params(model: tf.keras.Model) -> int:
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def batch_norm_layers(model: tf.keras.Model) -> list[str]:
  """Names of batch-normalisation layers (there must be none)."""
  return [
    layer.name
    for layer in model.submodules
    if isinstance(layer, tf.keras.layers.BatchNormalization)
  ]
