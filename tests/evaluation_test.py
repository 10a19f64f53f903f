"""Evaluation: the loss and accuracy of given weights, batched or not."""

import numpy as np
import tensorflow as tf

from dopamine_tff import dp_sgd
from dopamine_tff import models
from dopamine_tff.program import evaluation


def test_batched_evaluation_matches_one_pass():
  model = models.small_cnn((8, 8, 1), 3)
  weights = models.initial_weights("small_cnn", (8, 8, 1), 3, seed=1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(37, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, 37).astype(np.int32)
  loss, acc = evaluation.evaluate(model, weights, x, y, batch=5)
  dp_sgd.assign_weights(model, weights)
  logits = model(x, training=False)
  want_loss = float(tf.reduce_mean(dp_sgd.loss_per_example(logits, y)))
  want_acc = float(np.mean(np.argmax(logits.numpy(), 1) == y))
  assert abs(loss - want_loss) < 1e-5 and acc == want_acc
  assert evaluation.evaluate(model, weights, x[:0], y[:0]) == (0.0, 0.0)
