"""Loss and accuracy of the global weights, in this Python process."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dopamine_tff import configs
from dopamine_tff import dp_sgd
from dopamine_tff import models
from dopamine_tff.data import loaders

TRAIN_EVAL_EXAMPLES = 2000


def evaluate(
  model: tf.keras.Model, weights, images: np.ndarray, labels: np.ndarray, batch: int = 512
):
  """(mean loss, accuracy) of `weights` on a set."""
  dp_sgd.assign_weights(model, weights)
  total_loss, correct = 0.0, 0
  for i in range(0, len(labels), batch):
    logits = model(images[i : i + batch], training=False)
    total_loss += float(tf.reduce_sum(dp_sgd.loss_per_example(logits, labels[i : i + batch])))
    correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == labels[i : i + batch]))
  n = max(len(labels), 1)
  return total_loss / n, correct / n


class Evaluator:
  """Loss and accuracy of global weights on the test set and a train subset.

  The train subset (TRAIN_EVAL_EXAMPLES pooled examples, drawn from the
  public seed) gives the train loss; evaluation is post-processing of the
  released weights, so it costs no privacy.
  """

  def __init__(self, cfg: configs.TrainConfig, data: loaders.FederatedData):
    self.model = models.build(cfg.model, data.image_shape, data.num_classes)
    pooled = data.pooled()
    self.pooled = pooled
    sub = np.random.default_rng(cfg.seed).permutation(len(pooled))[:TRAIN_EVAL_EXAMPLES]
    self.train = (pooled.images[sub], pooled.labels[sub])
    self.test = (data.test.images, data.test.labels)
    self.split = "val" if data.evaluation == "validation" else "test"  # for the log

  def __call__(self, weights, with_train=True) -> dict:
    out = {}
    if with_train:
      out["train_loss"], _ = evaluate(self.model, weights, *self.train)
    out["test_loss"], out["test_accuracy"] = evaluate(self.model, weights, *self.test)
    return out

  def save_model(self, weights, path: str) -> None:
    """Saves the Keras model holding `weights` (model.keras)."""
    dp_sgd.assign_weights(self.model, weights)
    self.model.save(path)
