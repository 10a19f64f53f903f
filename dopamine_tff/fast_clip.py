"""Per-example gradient norms and clipped sums for conv nets without a per-example loop.

For a layer z = W x + b (Dense) or z = conv(x, W) + b (Conv2D), the gradient of
example i's loss is a sum over the layer's T output positions of outer products:
dW_i = sum_t P_it (x) g_it and db_i = sum_t g_it, where P_it is the input (the
k x k patch of the input for a convolution, p = kh*kw*Cin values) feeding
position t and g_it = dL_i/dz_it (d = Cout values). Dense on a flat input has
T = 1.

One forward pass records every layer's input x and pre-activation output z; one
backward pass of the summed loss gives every g_i (examples do not interact: the
models have no batch normalisation). Then, per layer, one of two ways gives the
per-example squared norm ||dW_i||^2 (mixed ghost clipping, Bu et al. 2022):

* **explicit**: build dW_i, [B, p, d]. For a convolution, one batched matmul
  per kernel offset (the strided input slices, never the concatenated patch
  tensor, which cost more than the matmuls on CPU). O(B T p d) time, B p d
  memory.
* **ghost**: ||dW_i||^2 = sum_{t,t'} (P_i P_i^T)_{tt'} (g_i g_i^T)_{tt'}, two
  Grams of size T x T. O(B T^2 (p + d)) time, 2 B T^2 memory; nothing per
  example of the weights' size is built. For T = 1 it is ||x_i||^2 ||g_i||^2.

* **loop**: one Conv2DBackpropFilter per example in ``tf.map_fn``, for
  strided convolutions and per-example products of 2^23 multiply-adds or more.

``choose`` takes ghost when T^2 (p + d) < 16 p d (mixed ghost clipping's rule,
with the factor read off per-layer timings on this CPU), else loop for strided
convolutions and large products, else explicit. The clipped sum then needs no
second backward pass (book-keeping, Bu et al. 2023): with each example's clip
factor c_i, an explicit layer sums sum_i c_i dW_i from the dW_i it already has,
and a ghost layer computes the weight gradient once with g_i scaled by c_i
(Conv2DBackpropFilter, the op a plain step runs, or one matmul).

A privacy unit of several examples (``groups``: a patient) needs the norm of the
unit's summed gradient, cross terms included; that path builds dW_i explicitly
for every layer and sums them per unit.

Supported: functional Keras models whose trainable layers are Conv2D (groups 1,
dilation 1, activation None) and Dense (activation None), each with kernel and
bias, each called once. ``supports(model)`` tells; dp_sgd falls back to the
vectorised path otherwise. Tests compare both branches of every layer type with
a per-example loop.
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import tensorflow as tf

AUTO, GHOST, EXPLICIT, LOOP, GROUPED = "auto", "ghost", "explicit", "loop", "grouped"
STRATEGIES = (AUTO, GHOST, EXPLICIT, LOOP, GROUPED)

# Calibrated on the 2-core AMD EPYC CI machine from per-layer timings of the
# small CNN and SqueezeNet at 64x64 and 224x224 (experiments/profile_dp_step.py):
# the ghost norm wins when its Grams cost less than GHOST_FACTOR per-example
# weight gradients' worth of memory traffic, and one weight-gradient op per
# example beats batched matmuls for strided convolutions and large per-example
# products.
GHOST_FACTOR = 16
LOOP_MIN_MACS = 2**23
# Re-measured on the AVX-512 machine kind (oneDNN): for an unstrided kxk
# convolution over 1024 or more output positions, one grouped weight gradient
# over the batch beats the per-offset batched matmuls (small CNN 64x64 batch
# 100: conv0 23.7 -> 21.2 ms, conv1 30.4 -> 20.2 ms); below, at T = 256,
# the matmuls won (conv2 7.9 against 11.2 ms).
GROUPED_MIN_POSITIONS = 1024


def _taps(model: tf.keras.Model):
  return [layer for layer in model.layers if layer.trainable_weights]


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


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """How one layer's per-example norms are computed, and why."""

  name: str
  kind: str  # "conv" or "dense"
  positions: int  # T: output positions per example
  fan_in: int  # p: inputs per position (kh*kw*Cin for a convolution)
  fan_out: int  # d: outputs per position
  strategy: str  # GHOST, EXPLICIT or LOOP


def choose(
  positions: int, fan_in: int, fan_out: int, *, strided: bool = False, conv_kernel: bool = False
) -> str:
  """The cheaper way to a layer's per-example norms on CPU, from its shapes.

  GHOST when the Grams' work T^2 (p + d) is below GHOST_FACTOR * p d (the per-
  example gradients' size: explicit gradients are written once and read twice,
  in skinny products); else LOOP for a strided convolution or one whose
  per-example product T p d reaches LOOP_MIN_MACS; else GROUPED for a kxk
  convolution (``conv_kernel``) over GROUPED_MIN_POSITIONS or more positions;
  else EXPLICIT.
  Mixed ghost clipping (Bu et al. 2022) compares 2 T^2 with p d (memory); the
  factor here was measured (docs/performance.md).
  """
  if positions * positions * (fan_in + fan_out) < GHOST_FACTOR * fan_in * fan_out:
    return GHOST
  if strided or positions * fan_in * fan_out >= LOOP_MIN_MACS:
    return LOOP
  if conv_kernel and positions >= GROUPED_MIN_POSITIONS:
    return GROUPED
  return EXPLICIT


def _loopable(layer) -> bool:
  return isinstance(layer, tf.keras.layers.Conv2D) and not _is_pointwise(layer)


def _shape_of(layer) -> tuple[str, int, int, int]:
  out = layer.output.shape
  positions = math.prod(int(s) for s in out[1:-1]) if len(out) > 2 else 1
  fan_out = int(out[-1])
  if isinstance(layer, tf.keras.layers.Conv2D):
    kh, kw, cin, _ = layer.kernel.shape
    return "conv", positions, int(kh * kw * cin), fan_out
  return "dense", positions, int(layer.kernel.shape[0]), fan_out


def plan(model: tf.keras.Model, strategy: str = AUTO) -> list[LayerPlan]:
  """Each trainable layer's strategy; ``strategy`` other than AUTO forces one for all."""
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  out = []
  for layer in _taps(model):
    kind, t, p, d = _shape_of(layer)
    if strategy == AUTO:
      strided = _loopable(layer) and tuple(layer.strides) != (1, 1)
      chosen = choose(t, p, d, strided=strided, conv_kernel=_loopable(layer))
    else:
      chosen = strategy
    if (chosen == LOOP and not _loopable(layer)) or (
      chosen == GROUPED and not isinstance(layer, tf.keras.layers.Conv2D)
    ):
      chosen = EXPLICIT  # a matmul per example is what EXPLICIT already does
    out.append(LayerPlan(layer.name, kind, t, p, d, chosen))
  return out


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


def _is_pointwise(layer) -> bool:
  return tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)


def _offset_slices(layer, x):
  """For each kernel offset (row, column), the input values it meets: [B, H', W', Cin] each.

  A generator of strided slices of the padded input, in the kernel's (row,
  column) order (the k x k patches are their concatenation along channels);
  each slice is made when the caller asks for it, so the caller can order its
  creation after other ops (see _per_example).
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
    yield x
    return
  for i in range(kh):
    for j in range(kw):
      yield x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]


def _patches(layer, x):
  """The k x k input patches of every output position, [B, H', W', kh*kw*Cin]."""
  slices = list(_offset_slices(layer, x))
  return slices[0] if len(slices) == 1 else tf.concat(slices, axis=-1)


def _rows(t):
  """[B, ..., c] -> [B, T, c]."""
  return tf.reshape(t, [tf.shape(t)[0], -1, t.shape[-1]])


def _grouped_per_example(layer, x, g):
  """Per-example kernel gradients [B, p*d] of a convolution as ONE grouped one.

  The batch moves into the channels: input [1, H, W, B*Cin], output gradient
  [1, H', W', B*Cout]; the weight gradient of a convolution with B groups,
  [kh, kw, Cin, B*Cout], holds every example's dW_i side by side. It is the
  plain step's own kernel (Conv2DBackpropFilter), so it runs at the speed the
  CPU's convolution library gives the plain step.
  """
  batch = tf.shape(g)[0]
  kh, kw, cin, cout = layer.kernel.shape
  h, w = x.shape[1], x.shape[2]
  xt = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, batch * cin])
  gt = tf.reshape(tf.transpose(g, [1, 2, 0, 3]), [1, g.shape[1], g.shape[2], batch * cout])
  dw = tf.raw_ops.Conv2DBackpropFilter(
    input=xt,
    filter_sizes=tf.stack([kh, kw, cin, batch * cout]),
    out_backprop=gt,
    strides=[1, *layer.strides, 1],
    padding=layer.padding.upper(),
  )
  per_w = tf.transpose(tf.reshape(dw, [kh, kw, cin, batch, cout]), [3, 0, 1, 2, 4])
  return tf.reshape(per_w, [batch, -1])


def _per_example(layer, x, g, loop=False, grouped=False):
  """Explicit per-example gradients, flat: ([B, p*d] kernel, [B, d] bias).

  ``loop``: one Conv2DBackpropFilter per example (tf.map_fn), for convolutions.
  ``grouped``: one grouped Conv2DBackpropFilter over the batch, for convolutions.
  """
  batch = tf.shape(g)[0]
  rows_g = _rows(g)
  if grouped:
    return _grouped_per_example(layer, x, g), tf.reduce_sum(rows_g, axis=1)
  if loop:

    def one(pair):
      xi, gi = pair
      return tf.raw_ops.Conv2DBackpropFilter(
        input=xi[None],
        filter_sizes=layer.kernel.shape,
        out_backprop=gi[None],
        strides=[1, *layer.strides, 1],
        padding=layer.padding.upper(),
      )

    per_w = tf.map_fn(one, (x, g), fn_output_signature=tf.float32, parallel_iterations=4)
    return tf.reshape(per_w, [batch, -1]), tf.reduce_sum(rows_g, axis=1)
  if isinstance(layer, tf.keras.layers.Dense) and len(x.shape) == 2:
    per_w = x[:, :, None] * g[:, None, :]
    return tf.reshape(per_w, [batch, -1]), g
  if isinstance(layer, tf.keras.layers.Dense):
    per_w = tf.matmul(_rows(x), rows_g, transpose_a=True)
  else:
    # At most two slices alive: each is made after the product before the
    # previous one, so the step holds two input-sized slices, not k*k of them (a
    # patch tensor's worth: small CNN batch 100, DP peak 225 -> 127 MiB), while
    # two products can still run at once (one alive at a time cost 7 % time).
    parts, slices = [], _offset_slices(layer, x)
    while True:
      with tf.control_dependencies(parts[-2:-1]):
        piece = next(slices, None)
      if piece is None:
        break
      parts.append(tf.matmul(_rows(piece), rows_g, transpose_a=True))
    per_w = tf.stack(parts, axis=1)
  return tf.reshape(per_w, [batch, -1]), tf.reduce_sum(rows_g, axis=1)


def _sq(t):
  """Row-wise squared norms of [B, n]."""
  return tf.einsum("bn,bn->b", t, t)


def _ghost_sq(layer, x, g):
  """Per-example ||dW_i||^2 + ||db_i||^2 from Grams, without building dW_i."""
  if isinstance(layer, tf.keras.layers.Dense) and len(x.shape) == 2:
    sq_g = _sq(g)
    return _sq(x) * sq_g + sq_g
  rows_x = _rows(x) if isinstance(layer, tf.keras.layers.Dense) else _rows(_patches(layer, x))
  rows_g = _rows(g)
  gram_x = tf.matmul(rows_x, rows_x, transpose_b=True)
  gram_g = tf.matmul(rows_g, rows_g, transpose_b=True)
  return tf.einsum("btu,btu->b", gram_x, gram_g) + _sq(tf.reduce_sum(rows_g, axis=1))


def _weighted_backward(layer, x, g, c):
  """sum_i c_i dW_i, sum_i c_i db_i as one weight-gradient op with g_i scaled by c_i."""
  gc = g * tf.reshape(c, [-1] + [1] * (len(g.shape) - 1))
  if isinstance(layer, tf.keras.layers.Conv2D) and not _is_pointwise(layer):
    dw = tf.raw_ops.Conv2DBackpropFilter(
      input=x,
      filter_sizes=layer.kernel.shape,
      out_backprop=gc,
      strides=[1, *layer.strides, 1],
      padding=layer.padding.upper(),
    )
  else:
    cin = layer.kernel.shape[-2]
    flat_x = tf.reshape(x, [-1, cin])
    dw = tf.reshape(
      tf.matmul(flat_x, tf.reshape(gc, [-1, gc.shape[-1]]), transpose_a=True), layer.kernel.shape
    )
  return dw, tf.reduce_sum(tf.reshape(gc, [-1, gc.shape[-1]]), axis=0)


def _layer_terms(layer, strategy, x, g, groups=None, num_groups=None):
  """(squared norm per example [B] or per group [G], function: factors [B] -> (dW, db) sums)."""
  if groups is not None or strategy != GHOST:
    per_w, per_b = _per_example(layer, x, g, loop=strategy == LOOP, grouped=strategy == GROUPED)
    if groups is None:
      sq = _sq(per_w) + _sq(per_b)
    else:
      sq = _sq(tf.math.unsorted_segment_sum(per_w, groups, num_groups)) + _sq(
        tf.math.unsorted_segment_sum(per_b, groups, num_groups)
      )
    shape = layer.kernel.shape

    def weighted(c):
      return tf.reshape(tf.linalg.matvec(per_w, c, transpose_a=True), shape), tf.linalg.matvec(
        per_b, c, transpose_a=True
      )

    return sq, weighted
  return _ghost_sq(layer, x, g), lambda c: _weighted_backward(layer, x, g, c)


def clipped_sum(
  model: tf.keras.Model,
  x,
  y,
  l2_norm_clip,
  loss_fn,
  groups=None,
  num_groups=None,
  strategy: str = AUTO,
):
  """Sum over the batch of per-example gradients clipped to L2 norm C.

  With ``groups`` (int32 [B], ids in [0, num_groups)), each group's summed
  gradient is clipped to C instead: the privacy unit is the group (a patient);
  every layer then takes the explicit path. ``strategy`` forces GHOST or
  EXPLICIT for every layer (tests, benchmarks); AUTO chooses per layer.

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
    _layer_terms(layer, lp.strategy, xi, gi, groups, num_groups)
    for layer, lp, xi, gi in zip(_taps(model), plan(model, strategy), inputs, grads_z)
  ]
  norms = tf.sqrt(tf.add_n([sq for sq, _ in terms]))
  factor = tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, 1e-12))
  if groups is not None:
    factor = tf.gather(factor, groups)  # every example of a group gets its group's factor
  out = []
  for _, weighted in terms:
    out.extend(weighted(factor))
  return out, norms
