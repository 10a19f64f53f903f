"""Typed, validated configuration of a training run (the five settings).

TrainConfig checks itself field by field when built, and ``check_hospitals``
checks it against the number of hospitals K before any data is read: the
binaries call both before loading, and the loop (dopamine_tff/program/loop.py)
calls the second again as its own guard. LoopOptions says how the loop saves
its work. Data configuration lives in dopamine_tff/data/loaders.py
(DataConfig); the TFF runtime's in dopamine_tff/runtime/config.py (RuntimeConfig).
"""

from __future__ import annotations

import dataclasses
import math
import os

from dopamine_tff import config_checks
from dopamine_tff import models
from dopamine_tff import seeds

SETTINGS = ("c", "cdp", "f", "fpdp", "fscdp")
PRIVATE_SETTINGS = ("cdp", "fpdp", "fscdp")
CDP_IMPLS = ("ours", "tf_privacy")
RUNTIMES = ("tff", "in_process")
ACCOUNTANT_CHOICES = ("rdp", "pld", "both")
SECURE_AGGREGATION = ("auto", "none", "secagg", "secagg_plus")
# 'auto' (the default, in Python as on the command line): FSCDP masks with
# SecAgg's complete graph while its O(K^2) streams are cheap, SecAgg+ from
# here on (at K = 100 SecAgg's server unmasking is several times SecAgg+'s).
SECAGG_PLUS_FROM = 33
SECAGG_PRGS = ("chacha20", "philox_insecure")
PRIVACY_UNITS = ("example", "patient")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of one run.

  Attributes:
    setting: c (centralised SGD), cdp (centralised DP-SGD), f (FedAvg),
      fpdp (FedAvg with each hospital's own DP-SGD), fscdp (Dopamine).
    rounds: rounds to run. One round is one DP-SGD step for fscdp and
      cdp/ours; one epoch for c and cdp/tf_privacy; one FedAvg round for f, fpdp.
    model: 'small_cnn' or 'squeezenet'.
    learning_rate, momentum: SGD with heavy-ball momentum.
    batch_size: B of c, f, fpdp (local batches) and cdp/tf_privacy.
    local_epochs: E of f and fpdp.
    client_fraction: share of hospitals taking part in a round of f and fpdp.
    sampling_prob: Poisson q of fscdp and cdp/ours (per example, per step).
    noise_multiplier: sigma; the noise on the sum has std sigma*C.
    l2_norm_clip: C.
    delta: target delta of the reported (epsilon, delta).
    target_epsilon: stop before the round that would exceed it (None: no stop).
    accountant: 'rdp', 'pld' or 'both' (both reported; the budget uses RDP,
      the more conservative).
    cdp_impl: 'ours' (our DP-SGD process with K=1) or 'tf_privacy' (TF
      Privacy's VectorizedDPKerasSGDOptimizer).
    secure_sum_bound: range of the secure sum (None: derived from q, C, sigma).
    seed: seed of what is not secret: the data split, initial weights,
      simulated dropouts and FedAvg's client selection.
    insecure_seeded_noise: derive every secret key (noise shares, Poisson
      masks, dithers, SecAgg keys and graphs) from `seed` instead of the OS
      CSPRNG, for exact replays. NOT PRIVATE against anyone who knows the
      seed; summary.json says so (dopamine_tff/seeds.py).
    hardened_noise: draw each noise coordinate as the sum of 4 float64
      Gaussians (Holohan and Braghin 2021, as Opacus's secure_mode) against
      floating-point attacks on the sampler; same law, more compute.
    eval_every: evaluate every this many rounds (and at the last round).
    runtime: 'tff' (TFF's C++ worker) or 'in_process' (the same TF functions
      in this Python process; uses a GPU where TensorFlow sees one).
    dropout_prob: chance that a hospital fails to deliver in a round (federated
      settings), drawn independently per hospital and round from the seed.
    dropout_schedule: deterministic dropouts, ((round, (hospital, ...)), ...)
      with 1-based rounds; added to the random ones.
    min_surviving_hospitals: M. Each Dopamine hospital adds the noise share
      sigma*C/sqrt(M), so a round with at least M survivors has at least the
      target noise; a round with fewer is skipped (None: M = K).
    secure_aggregation: 'auto' (the default: FSCDP 'secagg' for 2 to 32
      hospitals, 'secagg_plus' from 33; the other settings 'none'), 'none' (a
      plain integer sum of the codes: TFF's runtime has no protocol),
      'secagg' (masked sums, Bonawitz et al. 2017) or 'secagg_plus' (k
      neighbours, Bell et al. 2020); fscdp only.
    secagg_threshold: Shamir threshold t >= 2 (None: a majority of K for
      secagg; derived for secagg_plus).
    secagg_neighbours: k of secagg_plus, even (None: derived from K and the
      two assumptions below for 2^-40 security, 2^-20 correctness).
    secagg_adversarial_fraction: gamma, the share of hospitals SecAgg+'s
      parameters assume corrupted.
    secagg_dropout_rate: delta, the share of hospitals SecAgg+'s parameters
      assume drop in a round.
    secagg_prg: 'chacha20', or 'philox_insecure' (fast, NOT cryptographic).
    secagg_server_model: 'malicious' (the server may lie about who dropped:
      thresholds above half the holders plus the corrupted ones) or
      'semi_honest' (smaller thresholds and SecAgg+ graphs).
    secagg_unmask_dropout_prob: chance that a hospital which sent its masked
      vector is gone before it answers the unmasking (its input still counts).
      With secure aggregation the --dropout_prob / --dropout_schedule
      hospitals drop after the keys were shared, before sending the masked
      vector: their pairwise masks are recovered from shares.
    assumed_colluders: c, hospitals assumed to collude with the server
      (fscdp): their noise shares are known to it, so a round's effective
      noise is sigma*C*sqrt((K'-c)/M). A second ledger accounts for it; the
      run reports and budgets the worse of the two.
    provision_for_colluders: size each share sigma*C/sqrt(M-c) so that the
      honest hospitals' noise alone meets sigma (costs accuracy).
    privacy_unit: 'example' (one image) or 'patient' (all of a patient's
      images: patients are Poisson-sampled and each patient's summed gradient
      is clipped to C; needs patient ids in the data). The accounting is the
      same in form; the guarantee is per unit.
    ema_decay: exponential moving average of the released global weights
      (post-processing: no privacy cost); evaluation and the final model use
      it. The decay ramps up as min(d, (1 + t) / (10 + t)). 0: off.
    lr_schedule: 'constant' or 'cosine' (decay to 0 over `rounds` server
      steps; for FedAvg settings it scales the server's mean delta).
    augmentations: augmentation multiplicity m: each example of a step is
      seen as m random flips/shifts; DP settings average their gradients
      before clipping (sensitivity still C), C and F average their losses.
      0: off. Costs m times the compute of a step.
    init_weights: starting weights from a file (.npz of our variables,
      .weights.h5 or .keras; dopamine_tff/init_weights.py), e.g. public
      pretraining; None: drawn from `seed`.
    reinit_head: with init_weights, draw a head of another class count afresh.
    trainable: which layers train: all, head (the last layer with weights), or
      from:<layer>; the others keep their starting weights exactly, get no
      gradient work and no noise (dopamine_tff/models.py).
  """

  setting: str = "fscdp"
  rounds: int = 100
  model: str = "small_cnn"
  learning_rate: float = 0.002
  momentum: float = 0.9
  batch_size: int = 50
  local_epochs: int = 5
  client_fraction: float = 0.5
  sampling_prob: float = 0.03425
  noise_multiplier: float = 1.15
  l2_norm_clip: float = 2.0
  delta: float = 1e-4
  target_epsilon: float | None = None
  accountant: str = "rdp"
  cdp_impl: str = "ours"
  secure_sum_bound: float | None = None
  seed: int = 0
  insecure_seeded_noise: bool = False
  hardened_noise: bool = False
  eval_every: int = 1
  runtime: str = "tff"
  dropout_prob: float = 0.0
  dropout_schedule: tuple = ()
  min_surviving_hospitals: int | None = None
  secure_aggregation: str = "auto"
  secagg_threshold: int | None = None
  secagg_neighbours: int | None = None
  secagg_prg: str = "chacha20"
  secagg_server_model: str = "malicious"
  secagg_adversarial_fraction: float = 0.05
  secagg_dropout_rate: float = 0.33
  secagg_unmask_dropout_prob: float = 0.0
  assumed_colluders: int = 0
  provision_for_colluders: bool = False
  privacy_unit: str = "example"
  ema_decay: float = 0.0
  lr_schedule: str = "constant"
  augmentations: int = 0
  init_weights: str | None = None
  reinit_head: bool = False
  trainable: str = "all"

  def __post_init__(self):
    for name, choices in (
      ("setting", SETTINGS),
      ("model", models.MODELS),
      ("accountant", ACCOUNTANT_CHOICES),
      ("cdp_impl", CDP_IMPLS),
      ("runtime", RUNTIMES),
      ("secure_aggregation", SECURE_AGGREGATION),
      ("secagg_prg", SECAGG_PRGS),
      ("lr_schedule", LR_SCHEDULES),
      ("privacy_unit", PRIVACY_UNITS),
    ):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name}={getattr(self, name)!r}: must be one of {choices}")
    config_checks.check_train(self)  # ranges and combinations

  @property
  def budget_accountant(self) -> str:
    """The accountant whose epsilon is reported as `epsilon` and budgeted."""
    return "pld" if self.accountant == "pld" else "rdp"

  def reports(self, kind: str) -> bool:
    return self.accountant in (kind, "both")

  @property
  def private(self) -> bool:
    return self.setting in PRIVATE_SETTINGS

  @property
  def noise_draws(self) -> int:
    return 4 if self.hardened_noise else 1

  @property
  def randomness(self) -> seeds.Randomness:
    """The source of the run's secret keys (a new one per call: no state to save)."""
    return seeds.Randomness(self.seed, seeded=self.insecure_seeded_noise)

  @property
  def tf_privacy_baseline(self) -> bool:
    """CDP run by TF Privacy's Keras optimizer (--cdp_impl=tf_privacy), not ours."""
    return self.setting == "cdp" and self.cdp_impl == "tf_privacy"

  def epochs_after(self, rounds: int) -> float:
    """Epochs of training data seen after `rounds` rounds (the one definition)."""
    if self.tf_privacy_baseline:
      return float(rounds)  # one round is one epoch of fixed-size batches
    if self.setting in ("cdp", "fscdp"):
      return rounds * self.sampling_prob
    if self.setting == "c":
      return float(rounds)
    return rounds * self.local_epochs * self.client_fraction

  def rounds_for(self, epochs: float) -> int:
    """The fewest rounds that see `epochs` epochs."""
    return math.ceil(epochs / self.epochs_after(1) - 1e-9)

  def fpdp_steps(self, units: int) -> tuple[float, int]:
    """(q, steps) of one FPDP hospital's round: E * ceil(n / B) steps at q = B / n."""
    return min(1.0, self.batch_size / units), self.local_epochs * math.ceil(units / self.batch_size)

  def check_hospitals(self, num_hospitals: int) -> None:
    """Refuses what only K can refute (ValueError), before any data is read.

    Args:
      num_hospitals: K of the data; CDP and C pool it into one party.
    """
    for r, hospitals in self.dropout_schedule:
      bad = sorted(int(h) for h in hospitals if int(h) >= num_hospitals)
      if bad:
        raise ValueError(
          f"dropout_schedule: round {r} names hospital(s) {bad}, but there are only "
          f"{num_hospitals} (indices 0-{num_hospitals - 1})"
        )
    k = 1 if self.setting in ("c", "cdp") else num_hospitals
    if self.min_surviving_hospitals is not None and self.min_surviving_hospitals > k:
      raise ValueError(
        f"min_surviving_hospitals={self.min_surviving_hospitals} exceeds the {k} hospitals "
        "of this setting"
      )
    self.secagg_config(num_hospitals)  # thresholds, colluders, graphs

  def check_delta(self, units: int) -> None:
    """Refuses delta >= 1/N (ValueError): such a delta admits releasing one of the
    N protected units (examples or patients) outright, so the epsilon beside it
    would mean nothing."""
    if self.private and units > 0 and self.delta >= 1.0 / units:
      raise ValueError(
        f"delta={self.delta:g} >= 1/N = 1/{units}: a mechanism that publishes one of the "
        f"{units} protected {self.privacy_unit}s outright meets it, so no epsilon would mean "
        f"anything; choose delta well below 1/N (e.g. {0.1 / units:.2g})"
      )

  def secure_aggregation_for(self, num_hospitals: int) -> str:
    """The secure sum this run uses with K hospitals: the option, or for 'auto'
    SecAgg for FSCDP with 2 to SECAGG_PLUS_FROM - 1 hospitals, SecAgg+ from
    there on, and none for the other settings (which send no secure sum) or
    one hospital (nothing to hide its update among)."""
    if self.secure_aggregation != "auto":
      return self.secure_aggregation
    if self.setting != "fscdp" or num_hospitals < 2:
      return "none"
    return "secagg" if num_hospitals < SECAGG_PLUS_FROM else "secagg_plus"

  def secagg_config(self, num_hospitals: int):
    """The run's SecAggConfig, None for the plain sum (ValueError for
    parameters it cannot cover). The one place the option is resolved."""
    mode = self.secure_aggregation_for(num_hospitals)
    if mode == "none":
      return None
    from dopamine_tff.secagg import config as secagg_config

    return secagg_config.SecAggConfig(
      mode,
      num_hospitals,
      threshold=self.secagg_threshold,
      neighbours=self.secagg_neighbours,
      prg=self.secagg_prg,
      adversarial_fraction=self.secagg_adversarial_fraction,
      dropout_rate=self.secagg_dropout_rate,
      colluders=self.assumed_colluders,
      server_model=self.secagg_server_model,
    )


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How the loop saves its work.

  Attributes:
    checkpoint_every: save program state every this many rounds (0: never).
    resume: continue from the newest checkpoint in the output directory.
    tensorboard: also write TensorBoard events.
    audit: run membership-inference attacks on the final model
      (dopamine_tff/audit.py) and put the results in summary.json.
    overwrite: replace a previous run in the output directory. Without it
      (and without resume) a directory holding a run is refused.
    record_timings: write each round's time into metrics.csv and TensorBoard
      (a side channel: a round's time grows with its Poisson batches).
  """

  checkpoint_every: int = 10
  resume: bool = False
  tensorboard: bool = True
  audit: bool = False
  overwrite: bool = False
  record_timings: bool = False

  def __post_init__(self):
    if self.checkpoint_every < 0:
      raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


def check_compatible(train: TrainConfig, data) -> None:
  """Refuses, before any data is read, what the data configuration refutes (ValueError).

  Args:
    train: the run's TrainConfig.
    data: its data/loaders.DataConfig: K, and whether the source has patient ids.
  """
  train.check_hospitals(data.num_hospitals)
  if train.trainable.startswith("from:"):
    from dopamine_tff import models  # builds the model: its layer names, no data

    models.first_trainable(models.build(train.model, (32, 32, 3), 5), train.trainable)
  if train.init_weights and not os.path.isfile(train.init_weights):
    raise ValueError(f"--init_weights={train.init_weights}: no such file")
  if train.init_weights:
    from dopamine_tff import init_weights  # numpy only

    wanted = init_weights.expected_normalization(train.init_weights)
    if wanted is not None and wanted != data.normalization:
      raise ValueError(
        f"--init_weights={train.init_weights} expects inputs scaled as {wanted!r} (its .json), "
        f"but the data is scaled as {data.normalization!r}: pass --normalization={wanted}"
      )
  if (
    train.private
    and train.privacy_unit == "patient"
    and data.dataset in ("synthetic", "synthetic_public", "digits")
  ):
    raise ValueError(
      f"privacy_unit=patient needs patient ids, and --dataset={data.dataset} has none (use "
      "eyepacs, or aptos with a patient_id column)"
    )
