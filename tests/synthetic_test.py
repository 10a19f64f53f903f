"""The built-in synthetic fundus images."""

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import models
from dopamine_tff.data import synthetic


def test_deterministic_shapes_and_range():
  a, la = synthetic.make_synthetic_retina(20, image_size=32, seed=5)
  b, lb = synthetic.make_synthetic_retina(20, image_size=32, seed=5)
  c, _ = synthetic.make_synthetic_retina(20, image_size=32, seed=6)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert not np.array_equal(a, c)
  assert a.shape == (20, 32, 32, 3) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  # Black corners outside the fundus, colour inside, red dominating.
  assert a[:, 0, 0].max() == 0.0
  centre = a[:, 12:20, 12:20].mean(axis=(0, 1, 2))
  assert centre[0] > centre[1] > centre[2]


def test_class_imbalance_follows_aptos():
  _, labels = synthetic.make_synthetic_retina(2000, image_size=16, seed=0)
  freq = np.bincount(labels, minlength=5) / len(labels)
  np.testing.assert_allclose(freq, [0.49, 0.10, 0.27, 0.05, 0.08], atol=0.035)


def test_lesions_increase_with_grade():
  rng = np.random.default_rng(0)

  # Dark-red lesion pixels (haemorrhages, microaneurysms) per grade.
  def lesion_area(grade):
    imgs = np.stack([synthetic.render_fundus(rng, grade, 64) for _ in range(30)])
    dark_red = (imgs[..., 0] > 0.25) & (imgs[..., 0] < 0.5) & (imgs[..., 1] < 0.12)
    return dark_red.mean()

  areas = [lesion_area(g) for g in range(5)]
  assert areas[0] < areas[1] < areas[2] < areas[3]
  assert areas[4] > areas[2]


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_examples"):
    synthetic.make_synthetic_retina(0)
  with pytest.raises(ValueError, match="image_size"):
    synthetic.make_synthetic_retina(10, image_size=4)


def test_learnable_but_not_trivial():
  """A small CNN without privacy beats the majority class and stays below 100 %."""
  x, y = synthetic.make_synthetic_retina(1600, image_size=32, seed=1)
  x = x * 2 - 1
  tf.keras.utils.set_random_seed(0)
  model = models.small_cnn((32, 32, 3), 5)
  model.compile(
    optimizer=tf.keras.optimizers.Adam(2e-3),
    loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
  )
  model.fit(x[:1200], y[:1200], epochs=15, batch_size=32, verbose=0)
  _, acc = model.evaluate(x[1200:], y[1200:], verbose=0)
  majority = np.bincount(y[1200:]).max() / 400
  assert acc > majority + 0.1, (acc, majority)
  assert acc < 0.97, acc
