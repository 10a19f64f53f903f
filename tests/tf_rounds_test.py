"""dopamine_tff/tf_rounds.py's client and server steps as plain TF, without TFF.

As TFF's simple_fedavg tests its TF functions: exact cases with zero noise and
huge clip norms, so a result is compared with what SGD computes by hand.
"""

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import dp_sgd
from dopamine_tff import models
from dopamine_tff import quantization
from dopamine_tff import tf_rounds

SHAPE = (8, 8, 1)


def _model():
  tf.keras.utils.set_random_seed(0)
  return models.build("small_cnn", SHAPE, 3)


def _data(n=20):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
  y = rng.integers(0, 3, n).astype(np.int32)
  return tf.constant(x), tf.constant(y)


def _params(**kw):
  base = dict(
    sampling_prob=1.0, l2_norm_clip=1e6, noise_stddev=0.0, learning_rate=0.1, momentum=0.0
  )
  return tf_rounds.DpSgdParams(**{**base, **kw})


def test_all_examples_takes_memory_tensors_and_one_element_datasets_alike():
  x, y = _data()
  from_memory = tf_rounds.all_examples((x, y))
  from_dataset = tf_rounds.all_examples(tf.data.Dataset.from_tensors((x, y)))
  for a, b in zip(from_memory[:2], from_dataset[:2]):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert from_memory[2] is None


def test_a_noise_free_unclipped_client_step_is_the_summed_gradient():
  model = _model()
  weights = [tf.identity(v) for v in models.variables(model)]
  x, y = _data()
  noisy_sum, n = tf_rounds.dp_client_update(
    model, weights, (x, y), tf.constant([1, 2], tf.int64), _params()
  )
  assert int(n) == 20
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(dp_sgd.loss_per_example(model(x, training=True), y))
  expected = models.scatter(model, tape.gradient(loss, model.trainable_variables))
  for got, want in zip(noisy_sum, expected):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-4, atol=1e-5)


def test_server_step_divides_by_the_expected_batch_and_skips_empty_rounds():
  state = tf_rounds.initial_state([np.ones(3, np.float32)], with_velocity=True)
  params = _params(sampling_prob=0.5, learning_rate=0.1)
  new = tf_rounds.dp_server_update(state, [tf.fill([3], 4.0)], tf.constant(8), params)
  # gradient 4 / (0.5 * 8) = 1; one SGD step of 0.1.
  np.testing.assert_allclose(new.weights[0].numpy(), 0.9)
  assert int(new.round_num) == 1
  skipped = tf_rounds.dp_server_update(state, [tf.fill([3], 4.0)], tf.constant(0), params)
  np.testing.assert_array_equal(skipped.weights[0].numpy(), 1.0)  # nobody delivered
  assert int(skipped.round_num) == 1


@pytest.mark.parametrize("schedule,expected", [("constant", 1.0), ("cosine", 0.5)])
def test_lr_factor(schedule, expected):
  assert float(tf_rounds.lr_factor(5, schedule, 10)) == pytest.approx(expected)


def test_encoded_round_decodes_to_the_noised_sum():
  """Two hospitals' codes under zero-sum dithers decode to their sum within the step."""
  cfg = quantization.QuantizationConfig(bound=10.0, max_summands=2)
  values = [[tf.constant([0.25, -1.5, 3.0])], [tf.constant([1.0, 2.0, -0.5])]]
  keys = np.arange(8, dtype=np.uint32).reshape(1, 8)
  codes = []
  for k, v in enumerate(values):
    r = quantization.host_dither(keys, [1 if k == 0 else -1], 3)
    codes.append(quantization.encode(v, r, cfg)[0])
  total = quantization.decode(tf.add_n(codes), tf.zeros([3], tf.float64), cfg)
  np.testing.assert_allclose(total.numpy(), [1.25, 0.5, 2.5], atol=cfg.error_bound)


@pytest.mark.parametrize("with_groups", [False, True])
def test_a_file_per_example_shard_reads_only_the_poisson_sample(tmp_path, with_groups):
  """With example_files the worker draws the sample, then reads those images
  only: with every other image's file deleted the step still runs, and its
  result is the in-memory step's bit for bit."""
  import os

  from dopamine_tff import seeds
  from dopamine_tff.data import loaders
  from dopamine_tff.data import shards

  x, y = _data(40)
  patients = np.arange(40) // 2 if with_groups else None
  s = loaders.ImageSet(x.numpy(), y.numpy(), patients)
  (path,) = shards.write_shards([s], str(tmp_path), with_groups, example_files=True)
  params = _params(sampling_prob=0.3, l2_norm_clip=0.5, noise_stddev=0.1, patient_unit=with_groups)
  key = tf.constant(seeds.client_key(0, 1, 0))
  sample_seed = seeds.stream(key, seeds.Purpose.SAMPLE)
  if with_groups:
    groups = tf.constant(shards.patient_ids(s))
    mask = dp_sgd.group_poisson_mask(groups, params.sampling_prob, sample_seed).numpy()
  else:
    mask = dp_sgd.poisson_mask(40, params.sampling_prob, sample_seed).numpy()
  assert 0 < mask.sum() < 40
  for i in np.flatnonzero(~mask):
    os.remove(os.path.join(path + shards.EXAMPLES, f"{i:08d}.f32"))
  model = _model()
  weights = [v.numpy() for v in model.variables]
  from_files = tf_rounds.dp_client_update(
    model,
    weights,
    shards.hospital_dataset(path, SHAPE, with_groups, example_files=True),
    key,
    params._replace(example_files=True),
  )
  memory = shards.in_memory(s, with_groups)
  in_memory = tf_rounds.dp_client_update(model, weights, memory, key, params)
  for a, b in zip(from_files[0], in_memory[0]):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert int(from_files[1]) == int(in_memory[1]) == 40
  # The guard can fire: reading every image fails on the deleted files.
  with pytest.raises(tf.errors.NotFoundError):
    tf_rounds.dp_client_update(
      model,
      weights,
      shards.hospital_dataset(path, SHAPE, with_groups, example_files=True),
      key,
      params._replace(example_files=True, sampling_prob=1.0),
    )
