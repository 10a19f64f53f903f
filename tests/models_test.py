"""Models: shapes, parameter counts, no batch normalisation."""

import pytest
import tensorflow as tf

from dopamine_tff import models


@pytest.mark.parametrize(
  "name,shape",
  [
    ("squeezenet", (224, 224, 3)),
    ("squeezenet", (64, 64, 3)),
    ("squeezenet", (32, 32, 3)),
    ("small_cnn", (64, 64, 3)),
    ("small_cnn", (8, 8, 1)),
  ],
)
def test_output_shape_and_no_batch_norm(name, shape):
  model = models.build(name, shape, 5)
  assert model.output_shape == (None, 5)
  assert models.batch_norm_layers(model) == []
  out = model(tf.zeros([2, *shape]))
  assert out.shape == (2, 5)


def test_squeezenet_parameter_count_is_the_papers():
  # SqueezeNet 1.1 has 1.235 M parameters with its 1000-class head
  # (torchvision); with a 5-class head it has 0.725 M.
  n = models.count_params(models.squeezenet_v1_1((224, 224, 3), 5))
  assert n == 725_061
  n1000 = models.count_params(models.squeezenet_v1_1((224, 224, 3), 1000))
  assert n1000 == 1_235_496


def test_batch_norm_is_detected():
  inputs = tf.keras.Input((4,))
  model = tf.keras.Model(inputs, tf.keras.layers.BatchNormalization(name="bn")(inputs))
  assert models.batch_norm_layers(model) == ["bn"]


def test_initial_weights_are_deterministic():
  a = models.initial_weights("small_cnn", (8, 8, 1), 3, seed=4)
  b = models.initial_weights("small_cnn", (8, 8, 1), 3, seed=4)
  c = models.initial_weights("small_cnn", (8, 8, 1), 3, seed=5)
  assert all((x == y).all() for x, y in zip(a, b))
  assert not all((x == y).all() for x, y in zip(a, c))


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model"):
    models.build("resnet", (8, 8, 1), 2)


@pytest.mark.parametrize("name", models.MODELS)
def test_variables_keep_one_order_whatever_is_frozen(name):
  full = models.build(name, (32, 32, 3), 5)
  assert [v.ref() for v in models.variables(full)] == [v.ref() for v in full.trainable_variables]
  names = models.layers_with_weights(full)
  for spec, first in (("all", names[0]), ("head", names[-1]), (f"from:{names[2]}", names[2])):
    model = models.build(name, (32, 32, 3), 5, spec)
    shapes = [tuple(v.shape) for v in models.variables(model)]
    assert shapes == [tuple(v.shape) for v in full.trainable_variables]
    trains = [v.name.split("/")[0] for v in model.trainable_variables]
    assert trains[0] == first and set(trains) == set(names[names.index(first) :])


def test_a_trainable_spec_naming_no_layer_is_refused_with_the_choices():
  with pytest.raises(ValueError, match="has no layer 'nope' with weights; its layers are conv0"):
    models.build("small_cnn", (32, 32, 3), 5, "from:nope")
  with pytest.raises(ValueError, match="expected all, head, or from:<layer>"):
    models.build("small_cnn", (32, 32, 3), 5, "top")
