"""What the training loop asks of a trainer, and the machinery TFF trainers share.

A trainer owns one setting's round object (a TFF process, its in-process twin,
or, for TF Privacy's CDP baseline, a Keras model) and the hospitals' data
pipelines. Per round the loop (dopamine_tff/program/loop.py) asks ``plan``
which hospitals take part and what privacy each party spends, checks the
budget, then calls ``run``, which returns a RoundOutcome: the new state and
whether anything was released.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol

import numpy as np

from dopamine_tff import configs
from dopamine_tff import init_weights
from dopamine_tff import models
from dopamine_tff import tf_rounds
from dopamine_tff.data import shards


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """Who takes part in a round and the DP steps each party will take."""

  clients: tuple[int, ...]
  steps: dict  # party name -> accounting.StepSpec
  skipped: bool = False  # too few survivors: nothing is computed or released
  dropped: tuple[int, ...] = ()
  skip_reason: str = ""  # why, for the log
  unmask_dropped: tuple[int, ...] = ()  # secure aggregation: gone before unmasking


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
  """What a round did.

  Attributes:
    state: the state after the round (the old one when nothing was released).
    measurements: the round's numbers (e.g. secure_clipped_count).
    released: whether the round released an update. False when the secure
      aggregation aborted or an update could not be encoded: the loop then
      charges no privacy and keeps the weights.
    reason: why nothing was released (None when released).
  """

  state: object
  measurements: dict
  released: bool = True
  reason: str | None = None


class Trainer(Protocol):
  """The methods and properties the training loop calls."""

  # The secure sum's wrap-around probability per round (None: no secure sum).
  overflow_per_round: float | None
  # The secure-aggregation protocol's parameters (None: no protocol).
  secagg: object | None
  # Where the starting weights came from (init_weights.Provenance).
  provenance: object

  def parties(self) -> list[str]: ...

  def plan(self, round_num: int) -> RoundPlan: ...

  def run(self, state, plan: RoundPlan, round_num: int) -> RoundOutcome: ...

  def initial_state(self): ...

  def weights(self, state) -> list[np.ndarray]: ...

  def epochs(self, rounds_done: int) -> float: ...

  def state_arrays(self, state) -> dict[str, list[np.ndarray]]: ...

  def state_from_arrays(self, arrays): ...

  def describe(self) -> str: ...


class TffTrainer:
  """Shared machinery of the trainers whose round object runs tf_rounds' work.

  Subclasses set ``self.round`` (an object with ``initialize()`` and
  ``run(state, RoundInputs)``) in their constructor, after this one.
  """

  overflow_per_round: float | None = None
  secagg = None

  def __init__(
    self,
    cfg: configs.TrainConfig,
    sets,
    image_shape,
    num_classes,
    work_dir,
    ships_data=False,
    example_files=False,
  ):
    """`example_files`: the rounds sample before they read (DP-SGD): the TFF
    worker's shard then keeps each image in its own file (data/shards.py)."""
    self.cfg = cfg
    self.sizes = [len(s) for s in sets]
    self.image_shape = image_shape
    self.num_classes = num_classes
    self.model_fn = lambda: models.build(cfg.model, image_shape, num_classes, cfg.trainable)
    self.initial_weights, self.provenance = init_weights.starting_weights(
      cfg, image_shape, num_classes
    )
    self.num_words = int(sum(np.size(w) for w in self.initial_weights))
    # Per variable: frozen by --trainable (the server step leaves it exactly as it is).
    self.frozen = models.frozen_mask(self.model_fn())
    self.patient_unit = cfg.private and cfg.privacy_unit == "patient"
    # Secret keys: OS CSPRNG unless --insecure_seeded_noise (dopamine_tff/seeds.py).
    self.randomness = cfg.randomness
    # Sampling units per hospital: examples, or patients for the patient unit.
    self.units = [
      len(np.unique(shards.patient_ids(s))) if self.patient_unit else len(s) for s in sets
    ]
    # Set where the worker reads a file shard laid out for reading the sample only.
    self.example_files = False
    if cfg.runtime == "in_process":
      # The hospitals' arrays stay in memory: each round's Poisson sample
      # gathers its examples from them instead of re-reading the shard.
      self.datasets = [shards.in_memory(s, self.patient_unit) for s in sets]
    elif ships_data:
      # Workers that cannot read this host's files get the data in the requests.
      self.datasets = [shards.inline_dataset(s, image_shape, self.patient_unit) for s in sets]
    else:
      self.example_files = example_files
      paths = shards.write_shards(
        sets, os.path.join(work_dir, "shards"), self.patient_unit, example_files
      )
      self.datasets = [
        shards.hospital_dataset(p, image_shape, self.patient_unit, example_files) for p in paths
      ]

  def inputs(self, plan: RoundPlan, round_num: int, **extra) -> tf_rounds.RoundInputs:
    """The round's RoundInputs: the taking-part hospitals' data and secret keys."""
    return tf_rounds.RoundInputs(
      datasets=[self.datasets[k] for k in plan.clients],
      keys=[self.randomness.client_key(round_num, k) for k in plan.clients],
      senders=tuple(plan.clients),
      round_num=round_num,
      **extra,
    )

  def initial_state(self):
    # TFF's mergeable (multi-worker) context returns the state as a dict.
    return tf_rounds.as_server_state(self.round.initialize())

  def epochs(self, rounds_done: int) -> float:
    return self.cfg.epochs_after(rounds_done)

  @staticmethod
  def weights(state) -> list[np.ndarray]:
    return [np.asarray(w) for w in state.weights]

  @staticmethod
  def state_arrays(state) -> dict[str, list[np.ndarray]]:
    """The state as named lists of arrays (for checkpoints)."""
    return {
      "weights": [np.asarray(w) for w in state.weights],
      "velocity": [np.asarray(v) for v in state.velocity],
      "round_num": [np.asarray(state.round_num, np.int32)],
    }

  @staticmethod
  def state_from_arrays(arrays) -> tf_rounds.ServerState:
    return tf_rounds.ServerState(
      list(arrays["weights"]),
      list(arrays.get("velocity", [])),
      np.int32(arrays["round_num"][0]),
    )

  def describe(self) -> str:
    return (
      f"{type(self).__name__} ({self.cfg.runtime} runtime): {len(self.sizes)} hospitals, "
      f"sizes {self.sizes}"
      + (f"; privacy unit: patient ({self.units} patients)" if self.patient_unit else "")
      + (self._trains() if self.cfg.trainable != "all" else "")
    )

  def _trains(self) -> str:
    t = models.trainable_summary(
      self.cfg.model, self.image_shape, self.num_classes, self.cfg.trainable
    )
    return (
      f"; trains {t['trainable_parameters']} of {t['parameters']} parameters (from layer "
      f"{t['first_layer']}; the others frozen at their starting weights)"
    )
