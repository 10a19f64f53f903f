"""Per-example gradient norms and clipped sums for conv nets without a per-example loop.

For a layer z = W x + b (Dense) or z = conv(x, W) + b (Conv2D), the gradient of
example i's loss is an outer product of the layer's input and dL_i/dz_i:

* Dense: dW_i = x_i^T g_i, db_i = g_i.
* Conv2D: with the input's k x k patches P_i (``tf.image.extract_patches``,
  the kernel's (row, column, channel) order), dW_i = sum_hw P_ihw (x) g_ihw,
  db_i = sum_hw g_ihw: one einsum per layer.

One forward pass records every layer's input x and pre-activation output z; one
backward pass of the summed loss gives every g_i = dL/dz_i (examples do not
interact: the models have no batch normalisation). Per-example norms follow,
then the clipped sum is one more einsum per layer with each example's clip
factor folded into g. This replaces ``tf.vectorized_map``, whose Conv2D filter
gradient falls back to a while loop over examples (TF Privacy's own fast
clipping covers Dense and Embedding only).

Supported: functional Keras models whose trainable layers are Conv2D (groups 1,
dilation 1, activation None) and Dense (activation None), each with kernel and
bias, each called once. ``supports(model)`` tells; dp_sgd falls back to the
vectorised path otherwise. Tests compare with a per-example loop.
"""

from __future__ import annotations

import weakref

import tensorflow as tf


def _taps(model: tf.keras.Model):
  layers = [layer for layer in model.layers if layer.trainable_weights]
  return layers


def supports(model: tf.keras.Model) -> bool:
  """True when every trainable layer is a plain Conv2D or Dense (see module doc)."""
  if not isinstance(model, tf.keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
    return False
  for layer in _taps(model):
    if type(layer) not in (tf.keras.layers.Conv2D, tf.keras.layers.Dense):
      return False
    cfg = layer.get_config()
    if cfg.get("activation") != "linear" or not cfg.get("use_bias", False):
      return False
    if isinstance(layer, tf.keras.layers.Conv2D):
      if tuple(cfg["dilation_rate"]) != (1, 1) or cfg.get("groups", 1) != 1:
        return False
      if cfg["data_format"] != "channels_last":
        return False
    if len(layer._inbound_nodes) != 1:  # noqa: SLF001 (called more than once)
      return False
  # The variables must come from these layers only, kernel then bias.
  expected = [v.ref() for layer in _taps(model) for v in (layer.kernel, layer.bias)]
  return [v.ref() for v in model.trainable_variables] == expected


# Tap models by the model they tap. Kept outside the model: an attribute on a
# Keras model is tracked as a layer, after which ``supports`` saw a foreign
# trainable layer and a retrace silently took the slow vectorized_map path.
_TAP_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tap_model(model: tf.keras.Model) -> tf.keras.Model:
  """A model returning each layer's input and output, and the logits (cached)."""
  cached = _TAP_MODELS.get(model)
  if cached is not None:
    return cached
  taps = _taps(model)
  tap = tf.keras.Model(
    model.inputs, [[layer.input for layer in taps], [layer.output for layer in taps], model.outputs]
  )
  _TAP_MODELS[model] = tap
  return tap


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _patches(layer, x):
  """The k x k input patches of every output position, [B, H', W', kh*kw*Cin].

  Built from kh*kw strided slices of the padded input (in the kernel's
  (row, column, channel) order): much faster on CPU than
  tf.image.extract_patches for inputs with few channels.
  """
  kh, kw = layer.kernel_size
  sh, sw = layer.strides
  h, w = x.shape[1], x.shape[2]
  if layer.padding == "same":
    x = tf.pad(x, [[0, 0], _same_padding(h, kh, sh), _same_padding(w, kw, sw), [0, 0]])
    out_h, out_w = -(-h // sh), -(-w // sw)
  else:
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  if kh == kw == 1 and sh == sw == 1:
    return x
  slices = [
    x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
    for i in range(kh)
    for j in range(kw)
  ]
  return tf.concat(slices, axis=-1)


def _grouped(per_w, per_b, groups, num_groups):
  """Squared norms [G] of the per-group sums of per-example gradients."""
  gw = tf.math.unsorted_segment_sum(per_w, groups, num_groups)
  gb = tf.math.unsorted_segment_sum(per_b, groups, num_groups)
  return tf.reduce_sum(tf.square(gw), [1, 2]) + tf.reduce_sum(tf.square(gb), 1)


def _layer_terms(layer, x, g, groups=None, num_groups=None):
  """(squared norm per example [B] or per group [G], function: weights [B] -> (dW, db) sums).

  With ``groups`` (a group id per example, e.g. its patient) the norms are those
  of each group's summed gradient, and the per-example gradients are built
  explicitly (no ghost norm: the cross terms between a group's examples count).
  """
  if isinstance(layer, tf.keras.layers.Dense) and groups is not None:
    if len(x.shape) != 2:
      x = tf.reshape(x, [tf.shape(x)[0], -1, x.shape[-1]])
      g = tf.reshape(g, [tf.shape(g)[0], -1, g.shape[-1]])
      per_w, per_b = tf.einsum("bti,bto->bio", x, g), tf.reduce_sum(g, axis=1)
    else:
      per_w, per_b = tf.einsum("bi,bo->bio", x, g), g
    sq = _grouped(per_w, per_b, groups, num_groups)
    return sq, lambda c: (tf.einsum("b,bio->io", c, per_w), tf.einsum("b,bo->o", c, per_b))
  if isinstance(layer, tf.keras.layers.Dense):
    if len(x.shape) != 2:
      x = tf.reshape(x, [tf.shape(x)[0], -1, x.shape[-1]])
      g = tf.reshape(g, [tf.shape(g)[0], -1, g.shape[-1]])
      per_w = tf.einsum("bti,bto->bio", x, g)
      per_b = tf.reduce_sum(g, axis=1)
      sq = tf.reduce_sum(tf.square(per_w), [1, 2]) + tf.reduce_sum(tf.square(per_b), 1)
      return sq, lambda c: (tf.einsum("b,bio->io", c, per_w), tf.einsum("b,bo->o", c, per_b))
    # Ghost norm: ||x_b^T g_b||^2 = ||x_b||^2 ||g_b||^2, nothing per example is built.
    sq = tf.reduce_sum(tf.square(x), 1) * tf.reduce_sum(tf.square(g), 1) + tf.reduce_sum(
      tf.square(g), 1
    )
    return sq, lambda c: (tf.einsum("bi,bo->io", x, g * c[:, None]), tf.einsum("b,bo->o", c, g))
  patches = _patches(layer, x)
  per_w = tf.einsum("bhwi,bhwo->bio", patches, g)
  per_b = tf.reduce_sum(g, axis=[1, 2])
  if groups is None:
    sq = tf.reduce_sum(tf.square(per_w), [1, 2]) + tf.reduce_sum(tf.square(per_b), 1)
  else:
    sq = _grouped(per_w, per_b, groups, num_groups)
  shape = layer.kernel.shape

  def weighted(c):
    return tf.reshape(tf.einsum("b,bio->io", c, per_w), shape), tf.einsum("b,bo->o", c, per_b)

  return sq, weighted


def clipped_sum(model: tf.keras.Model, x, y, l2_norm_clip, loss_fn, groups=None, num_groups=None):
  """Sum over the batch of per-example gradients clipped to L2 norm C.

  With ``groups`` (int32 [B], ids in [0, num_groups)), each group's summed
  gradient is clipped to C instead: the privacy unit is the group (a patient).

  Returns:
    (list of summed clipped gradients in model.trainable_variables order,
     gradient norms before clipping, per example [B] or per group [G]).
  """
  tap = _tap_model(model)
  with tf.GradientTape() as tape:
    inputs, outputs, logits = tap(x, training=False)
    logits = logits[0] if isinstance(logits, list | tuple) else logits
    loss = tf.reduce_sum(loss_fn(logits, y))
  grads_z = tape.gradient(loss, outputs)
  terms = [
    _layer_terms(layer, xi, gi, groups, num_groups)
    for layer, xi, gi in zip(_taps(model), inputs, grads_z)
  ]
  norms = tf.sqrt(tf.add_n([sq for sq, _ in terms]))
  factor = tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, 1e-12))
  if groups is not None:
    factor = tf.gather(factor, groups)  # every example of a group gets its group's factor
  out = []
  for _, weighted in terms:
    out.extend(weighted(factor))
  return out, norms
