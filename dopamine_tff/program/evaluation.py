"""Loss, accuracy and the grading metrics of the global weights, in this Python process."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dopamine_tff import configs
from dopamine_tff import dp_sgd
from dopamine_tff import grading
from dopamine_tff import models
from dopamine_tff.data import loaders

TRAIN_EVAL_EXAMPLES = 2000


def predict(
  model: tf.keras.Model, weights, images: np.ndarray, labels: np.ndarray, batch: int = 512
) -> tuple[float, np.ndarray]:
  """(mean loss, softmax probabilities [N, C]) of `weights` on a set."""
  dp_sgd.assign_weights(model, weights)
  total_loss, probs = 0.0, []
  for i in range(0, len(labels), batch):
    logits = model(images[i : i + batch], training=False)
    total_loss += float(tf.reduce_sum(dp_sgd.loss_per_example(logits, labels[i : i + batch])))
    probs.append(tf.nn.softmax(logits).numpy())
  n = max(len(labels), 1)
  return total_loss / n, (np.concatenate(probs) if probs else np.zeros([0, model.output_shape[-1]]))


def evaluate(
  model: tf.keras.Model, weights, images: np.ndarray, labels: np.ndarray, batch: int = 512
):
  """(mean loss, accuracy) of `weights` on a set."""
  loss, probs = predict(model, weights, images, labels, batch)
  return loss, float(np.mean(np.argmax(probs, axis=1) == labels)) if len(labels) else 0.0


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
    self.dr = grading.is_dr(data.name, data.num_classes)
    self.seed = cfg.seed

  def __call__(self, weights, with_train=True) -> dict:
    """Loss, accuracy and the grading metrics (dopamine_tff/grading.py) of the
    evaluated split; per-class recall also as scalars ``recall_<class>``."""
    out = {}
    if with_train:
      out["train_loss"], _ = evaluate(self.model, weights, *self.train)
    images, labels = self.test
    out["test_loss"], probs = predict(self.model, weights, images, labels)
    out["test_accuracy"] = float(np.mean(np.argmax(probs, axis=1) == labels))
    graded = grading.grade_metrics(probs, labels, self.dr, self.seed)
    out.update(graded)
    out.update({f"recall_{c}": r for c, r in enumerate(graded["recall"])})
    return out

  def save_model(self, weights, path: str) -> None:
    """Saves the Keras model holding `weights` (model.keras)."""
    dp_sgd.assign_weights(self.model, weights)
    self.model.save(path)
