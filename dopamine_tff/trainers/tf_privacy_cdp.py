"""CDP with TF Privacy's own optimizer: the baseline our CDP is compared with."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dopamine_tff import accounting
from dopamine_tff import init_weights
from dopamine_tff import models
from dopamine_tff import seeds
from dopamine_tff.data import loaders
from dopamine_tff.trainers import base


class TfPrivacyCdpTrainer:
  """CDP with TF Privacy's own VectorizedDPKerasSGDOptimizer (the baseline).

  Differences from ours (documented in README): Keras iterates over shuffled
  fixed-size batches rather than Poisson samples, and the optimizer divides the
  noisy sum by the realised batch size. Accounting follows TF Privacy's
  convention (Poisson q = B/N, N/B steps per epoch). One round is one epoch.
  """

  overflow_per_round = None  # no secure sum
  secagg = None

  def __init__(self, cfg, sets, image_shape, num_classes, work_dir):
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras_vectorized

    del work_dir
    self.cfg = cfg
    pooled = loaders.ImageSet(
      np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets])
    )
    self.data = pooled
    tf.keras.utils.set_random_seed(cfg.seed)
    self.model = models.build(cfg.model, image_shape, num_classes, cfg.trainable)
    weights, self.provenance = init_weights.starting_weights(cfg, image_shape, num_classes)
    _assign(self.model, weights)
    opt = dp_optimizer_keras_vectorized.VectorizedDPKerasSGDOptimizer(
      l2_norm_clip=cfg.l2_norm_clip,
      noise_multiplier=cfg.noise_multiplier,
      num_microbatches=None,
      learning_rate=cfg.learning_rate,
      momentum=cfg.momentum,
    )
    loss = tf.keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction=tf.losses.Reduction.NONE
    )
    self.model.compile(optimizer=opt, loss=loss)
    self.optimizer = opt
    self._traced = False
    self.sizes = [len(pooled)]

  def initial_state(self):
    return {"weights": models_weights(self.model), "optimizer": []}

  def epochs(self, rounds_done: int) -> float:
    return self.cfg.epochs_after(rounds_done)

  def plan(self, round_num: int) -> base.RoundPlan:
    n = len(self.data)
    b = self.cfg.batch_size
    return base.RoundPlan(
      (0,),
      {accounting.ALL: accounting.StepSpec(min(1.0, b / n), self.cfg.noise_multiplier, n // b)},
    )

  def parties(self) -> list[str]:
    return [accounting.ALL]

  def epoch_global_seed(self, round_num: int) -> int | None:
    """TF's global seed when this process first traces, at epoch `round_num`.

    TF Privacy draws its noise with ``tf.random.normal`` from op kernels whose
    Philox streams are fixed when the train function is traced and advance as
    it runs. With secret randomness (the default) no global seed is set
    (None): each kernel then seeds itself with 128 bits from the OS, so a
    resumed process draws fresh noise. In the insecure seeded mode a process
    traces under a seed of the first epoch it runs (a resumed run never
    replays its predecessor's stream): consecutive from a hashed base, modulo
    TF's 2**31 - 1, distinct for every epoch of a run.
    """
    if not self.cfg.insecure_seeded_noise:
      return None
    base = seeds.host_int(self.cfg.seed, 0, seeds.Purpose.TFP_EPOCH, bits=31)
    return (base + round_num) % (2**31 - 1)

  def run(self, state, plan, round_num) -> base.RoundOutcome:
    del plan
    _assign(self.model, state["weights"])
    if state["optimizer"] and not self._traced:  # momentum saved in a checkpoint
      self.optimizer._create_all_weights(self.model.trainable_variables)  # noqa: SLF001
      self.optimizer.set_weights(list(state["optimizer"]))
    if not self._traced:
      tf.random.set_seed(self.epoch_global_seed(round_num))
      self.model.make_train_function(force=True)
      self._traced = True
    b = self.cfg.batch_size
    rng = self.cfg.randomness.rng(round_num, seeds.Purpose.TFP_EPOCH)
    order = rng.permutation(len(self.data))
    n = (len(order) // b) * b  # the optimizer needs full batches
    idx = order[:n]
    self.model.fit(
      self.data.images[idx], self.data.labels[idx], batch_size=b, epochs=1, shuffle=False, verbose=0
    )
    new_state = {
      "weights": models_weights(self.model),
      "optimizer": [np.asarray(v) for v in self.optimizer.get_weights()],
    }
    return base.RoundOutcome(new_state, {})

  @staticmethod
  def weights(state):
    return state["weights"]

  @staticmethod
  def state_arrays(state):
    # The optimizer's momentum is saved; the noise needs no state: a resumed
    # run draws fresh noise (the OS seeds the kernels; in the insecure seeded
    # mode, a stream keyed by its resume round: epoch_global_seed).
    return {"weights": list(state["weights"]), "optimizer": list(state["optimizer"])}

  @staticmethod
  def state_from_arrays(arrays):
    return {"weights": list(arrays["weights"]), "optimizer": list(arrays.get("optimizer", []))}

  def describe(self) -> str:
    return f"TF Privacy VectorizedDPKerasSGDOptimizer on {len(self.data)} pooled examples"


def models_weights(model) -> list[np.ndarray]:
  """Every weight, frozen or not, in ``models.variables`` order."""
  return [v.numpy() for v in models.variables(model)]


def _assign(model, weights) -> None:
  # Not Keras' set_weights: its order puts frozen layers last.
  for v, w in zip(models.variables(model), weights, strict=True):
    v.assign(w)
