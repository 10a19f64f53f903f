"""Plain-TensorFlow pieces of DP-SGD (Abadi et al. 2016) as Dopamine uses them.

Testable without TFF. A hospital's DP step (Algorithm 1, lines 4-9 of
Malekzadeh et al.):

1. Poisson sampling: each local example is in the batch independently with
   probability q (the batch may be empty).
2. Per-example gradients: for Conv2D/Dense models one einsum per layer
   (dopamine_tff/fast_clip.py); otherwise ``tf.vectorized_map``.
3. Each clipped to L2 norm C (the clipping of TF Privacy's GaussianSumQuery,
   vectorised over the batch).
4. Sum, plus Gaussian noise with standard deviation ``noise_stddev`` drawn by
   a TF Privacy GaussianSumQuery (stateless seeded draw, see below).

Normalisation is not done here: the caller divides by the *expected* batch
size q*N. The original divides by the realised batch size |D^t|, which is
data-dependent and outside the privacy analysis; we deliberately depart from it.

Randomness is stateless (``tf.random.stateless_*``) and keyed by a 128-bit
key that belongs to the hospital, drawn from the OS CSPRNG every round (or, in
the insecure seeded mode, derived from the run seed for replays); the Poisson
mask and the noise each get their own stream (dopamine_tff/seeds.py).
"""

from __future__ import annotations

from typing import NamedTuple

import dp_accounting
import tensorflow as tf
import tensorflow_privacy as tfp

from dopamine_tff import fast_clip
from dopamine_tff import models
from dopamine_tff import seeds


def loss_per_example(logits, labels):
  """Softmax cross-entropy, one value per example."""
  return tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
  """TF Privacy's GaussianSumQuery with a stateless, seeded noise draw.

  Clipping, global state and the DpEvent are the parent's. Only the noise
  generator differs: ``tf.random.stateless_normal`` keyed by ``seed`` (a
  secret 128-bit key from the OS CSPRNG by default, dopamine_tff/seeds.py)
  instead of an unseeded initializer.


  With ``draws`` = n > 1 each coordinate's noise is the sum of n independent
  float64 Gaussians of std stddev / sqrt(n), added in float64 (the
  mitigation of Holohan and Braghin 2021 against floating-point attacks on
  Gaussian samplers, as Opacus's secure_mode does with n = 4); the sum has
  the same N(0, stddev^2) law, so the DP event is unchanged.
  """

  def __init__(self, l2_norm_clip, stddev, seed, draws: int = 1):
    super().__init__(l2_norm_clip, stddev)
    self._seed = seed
    self._draws = int(draws)

  def get_noised_result(self, sample_state, global_state):
    flat = tf.nest.flatten(sample_state)
    # One draw for the whole structure, keyed by the one noise seed (no
    # per-variable derivation whose entropy could be lost).
    sizes = [tf.size(v) for v in flat]
    shape = tf.reshape(tf.add_n(sizes), [1])
    if self._draws == 1:
      noise = tf.random.stateless_normal(shape, self._seed, stddev=global_state.stddev)
      parts = tf.split(noise, tf.stack(sizes))
      noised = [v + tf.cast(tf.reshape(n, tf.shape(v)), v.dtype) for v, n in zip(flat, parts)]
    else:
      keys = tf.random.experimental.stateless_split(self._seed, self._draws)
      total = tf.add_n(
        [tf.random.stateless_normal(shape, keys[i], dtype=tf.float64) for i in range(self._draws)]
      )
      noise = total * tf.cast(global_state.stddev / self._draws**0.5, tf.float64)
      parts = tf.split(noise, tf.stack(sizes))
      noised = [
        tf.cast(tf.cast(v, tf.float64) + tf.reshape(n, tf.shape(v)), v.dtype)
        for v, n in zip(flat, parts)
      ]
    result = tf.nest.pack_sequence_as(sample_state, noised)
    # The same event the parent emits: a Gaussian with this noise multiplier.
    event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
    return result, global_state, event


def sum_event(sampling_prob: float, l2_norm_clip: float, noise_stddev: float):
  """The DpEvent the noise query itself emits for one Poisson-sampled noisy sum.

  For Dopamine's round pass the std of the *sum's* noise (K' shares of
  sigma*C/sqrt(M): sigma*C*sqrt(K'/M)); the host's ledger must record the
  same event (tests/trainers_test.py compares it with the trainer's plan).
  """
  query = SeededGaussianSumQuery(l2_norm_clip, noise_stddev, tf.zeros([2], tf.int64))
  _, _, event = query.get_noised_result([tf.zeros([1])], query.initial_global_state())
  gaussian = dp_accounting.GaussianDpEvent(float(event.noise_multiplier))
  if sampling_prob >= 1.0:
    return gaussian
  return dp_accounting.PoissonSampledDpEvent(sampling_prob, gaussian)


def poisson_mask(num_examples, sampling_prob, seed):
  """Boolean [num_examples]: True where the example is in this step's batch."""
  u = tf.random.stateless_uniform([num_examples], seed=seed, dtype=tf.float32)
  return u < sampling_prob


def group_poisson_mask(groups, sampling_prob, seed):
  """Boolean [N]: each group (patient, ids 0..G-1) is in the batch with probability q,
  all of its examples together."""
  chosen = poisson_mask(tf.reduce_max(groups) + 1, sampling_prob, seed)
  return tf.gather(chosen, groups)


def augment(x, seed):
  """Random flips (both axes) and shifts of up to 1/16 of the side; stateless, per image.

  Fundus photographs have no preferred orientation, so flips keep the label.
  """
  n, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
  s1 = seeds.stream(seed, seeds.Purpose.AUGMENT, 0)
  s2 = seeds.stream(seed, seeds.Purpose.AUGMENT, 1)
  u = tf.random.stateless_uniform([n, 2], s1)
  x = tf.where((u[:, 0] < 0.5)[:, None, None, None], tf.reverse(x, [2]), x)
  x = tf.where((u[:, 1] < 0.5)[:, None, None, None], tf.reverse(x, [1]), x)
  pad = max(1, h // 16)
  padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  offsets = tf.random.stateless_uniform([n, 2], s2, maxval=2 * pad + 1, dtype=tf.int32)

  def crop(args):
    image, off = args
    return tf.slice(image, [off[0], off[1], 0], [h, w, c])

  return tf.map_fn(crop, (padded, offsets), fn_output_signature=tf.TensorSpec([h, w, c], x.dtype))


def augmented_copies(x, y, copies: int, seed):
  """`copies` augmented versions of each example, with the example's index as group."""
  n = tf.shape(y)[0]
  xs = augment(tf.tile(x, [copies, 1, 1, 1]), seed)
  return xs, tf.tile(y, [copies]), tf.tile(tf.range(n), [copies])


def clipped_group_sum(model, x, y, groups, l2_norm_clip):
  """Sum over groups of each group's summed gradient clipped to C.

  Returns (list of summed clipped gradients, per-group norms before clipping).
  ``groups`` may be any int ids; they are made dense here.
  """
  _, dense = tf.unique(groups)
  num_groups = tf.reduce_max(dense) + 1
  if fast_clip.supports(model):
    return fast_clip.clipped_sum(model, x, y, l2_norm_clip, loss_per_example, dense, num_groups)
  grads = per_example_gradients(model, x, y)
  summed = [tf.math.unsorted_segment_sum(g, dense, num_groups) for g in grads]
  clipped, norms = clip_per_example(summed, l2_norm_clip)
  return [tf.reduce_sum(g, axis=0) for g in clipped], norms


def per_example_gradients(model: tf.keras.Model, x, y):
  """Gradients of each example's loss w.r.t. the trainable variables.

  Returns a list (one per variable) of tensors with a leading batch axis.
  """
  variables = model.trainable_variables

  def one(example):
    xi, yi = example
    with tf.GradientTape() as tape:
      loss = loss_per_example(model(xi[None], training=False), yi[None])
    return tape.gradient(loss, variables)

  return tf.vectorized_map(one, (x, y))


def clip_per_example(grads, l2_norm_clip):
  """Scales every example's gradient to global L2 norm at most C.

  Same arithmetic as GaussianSumQuery.preprocess_record (tf.clip_by_global_norm)
  applied to each example, but vectorised over the batch.

  Returns:
    (clipped grads list, per-example norms before clipping [B]).
  """
  sq = [tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1) for g in grads]
  norms = tf.sqrt(tf.add_n(sq))
  scale = tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, 1e-12))
  clipped = [g * tf.reshape(scale, [-1] + [1] * (len(g.shape) - 1)) for g in grads]
  return clipped, norms


class NoisySum(NamedTuple):
  """Result of one hospital's DP step (before normalisation).

  Attributes:
    noisy_sum: sum of clipped per-example gradients plus the noise share.
    batch_size: realised Poisson batch size (never released to the server).
  """

  noisy_sum: list
  batch_size: tf.Tensor


def _clipped_sum(model, xb, yb, mask, groups, augmentations, l2_norm_clip, seed):
  """The sampled batch's sum of clipped per-unit gradients (see noisy_clipped_sum)."""
  if augmentations:
    xa, ya, index = augmented_copies(
      xb, yb, augmentations, seeds.stream(seed, seeds.Purpose.AUGMENT)
    )
    unit = index if groups is None else tf.gather(tf.boolean_mask(groups, mask), index)
    # Sum of the unit's m copies clipped to m*C, divided by m: its mean clipped to C.
    summed, _ = clipped_group_sum(model, xa, ya, unit, augmentations * l2_norm_clip)
    return [g / augmentations for g in summed]
  if groups is not None:
    return clipped_group_sum(model, xb, yb, tf.boolean_mask(groups, mask), l2_norm_clip)[0]
  if fast_clip.supports(model):
    summed, _ = fast_clip.clipped_sum(model, xb, yb, l2_norm_clip, loss_per_example)
    return summed
  grads = per_example_gradients(model, xb, yb)
  clipped, _ = clip_per_example(grads, l2_norm_clip)
  return [tf.reduce_sum(g, axis=0) for g in clipped]


def noisy_clipped_sum(
  model,
  x,
  y,
  *,
  sampling_prob,
  l2_norm_clip,
  noise_stddev,
  seed,
  groups=None,
  augmentations=0,
  noise_draws=1,
  read=None,
) -> NoisySum:
  """Poisson-samples (x, y), clips per-example gradients and adds noise.

  With ``groups`` (int32 [N], a patient id per example, dense 0..G-1) the
  privacy unit is the group: groups are Poisson-sampled with probability q,
  all their examples together, and each group's summed gradient is clipped
  to C, so adding or removing one patient changes the sum by at most C.

  With ``augmentations`` = m > 0 (augmentation multiplicity, De et al. 2022)
  every sampled example is replaced by the mean gradient of m random
  augmentations of it before clipping (with ``groups``, the patient's images'
  augmentations are averaged per image and summed per patient): a unit still
  contributes at most C, so the sensitivity and the accounting are unchanged.

  Args:
    model: Keras model holding the current weights; only its trainable
      variables get gradients and noise (the result lists every variable,
      exact zeros for the frozen ones).
    x, y: all local examples of the hospital.
    sampling_prob: q in (0, 1].
    l2_norm_clip: C > 0.
    noise_stddev: std of the Gaussian noise added to the sum (sigma*C/sqrt(K)
      for a Dopamine share, sigma*C for central DP-SGD); 0 disables noise.
    seed: the step's key, int64 tensor of shape [2] (dopamine_tff/seeds.py).
    noise_draws: 1, or n > 1 float64 draws summed per coordinate
      (floating-point hardening, see SeededGaussianSumQuery).
    read: when x holds the examples' file paths, not the images: a function
      from the sampled paths to their images (shards.read_examples), so only
      the sampled examples are read, after the sample is drawn.
  """
  sample_seed = seeds.stream(seed, seeds.Purpose.SAMPLE)
  noise_seed = seeds.stream(seed, seeds.Purpose.NOISE)
  if groups is None:
    mask = poisson_mask(tf.shape(y)[0], sampling_prob, sample_seed)
  else:
    mask = group_poisson_mask(groups, sampling_prob, sample_seed)
  xb, yb = tf.boolean_mask(x, mask), tf.boolean_mask(y, mask)
  if read is not None:
    xb = read(xb)

  def clipped_sum():
    return _clipped_sum(model, xb, yb, mask, groups, augmentations, l2_norm_clip, seed)

  def zeros():
    return [tf.zeros_like(v) for v in model.trainable_variables]

  # Poisson sampling can give an empty batch; vectorized_map's fallback loop
  # for Conv2D's filter gradient cannot stack zero elements, so skip it.
  summed = tf.cond(tf.size(yb) > 0, clipped_sum, zeros)
  query = SeededGaussianSumQuery(l2_norm_clip, noise_stddev, noise_seed, noise_draws)
  noised, _, _ = query.get_noised_result(summed, query.initial_global_state())
  # Frozen layers (--trainable) had no gradient and get no noise: exact zeros.
  return NoisySum(models.scatter(model, list(noised)), tf.shape(yb)[0])


def momentum_step(weights, velocity, gradient, *, learning_rate, momentum):
  """SGD with heavy-ball momentum as torch.optim.SGD (used by the paper).

  v <- momentum * v + g;  w <- w - lr * v.  Returns (new weights, new velocity).
  """
  new_v = [momentum * v + g for v, g in zip(velocity, gradient)]
  new_w = [w - learning_rate * v for w, v in zip(weights, new_v)]
  return new_w, new_v


def assign_weights(model: tf.keras.Model, weights) -> None:
  """Sets every weight, frozen or not (``models.variables`` order)."""
  for v, w in zip(models.variables(model), weights, strict=True):
    v.assign(w)
