"""Typed, validated configuration of a training run (the five settings).

TrainConfig checks itself field by field when built, and ``check_hospitals``
checks it against the number of hospitals K before any data is read: the
binaries call both before loading, and the loop (dopamine_tff/program/loop.py)
calls the second again as its own guard. LoopOptions says how the loop saves
its work. Data configuration lives in dopamine_tff/data/loaders.py
(DataConfig); the TFF runtime's in dopamine_tff/runtime.py (RuntimeConfig).
"""

from __future__ import annotations

import dataclasses
import math
import os

from dopamine_tff import models
from dopamine_tff import seeds

SETTINGS = ("c", "cdp", "f", "fpdp", "fscdp")
PRIVATE_SETTINGS = ("cdp", "fpdp", "fscdp")
CDP_IMPLS = ("ours", "tf_privacy")
RUNTIMES = ("tff", "in_process")
ACCOUNTANT_CHOICES = ("rdp", "pld", "both")
SECURE_AGGREGATION = ("none", "secagg", "secagg_plus")
SECAGG_PRGS = ("chacha20", "philox_insecure")
PRIVACY_UNITS = ("example", "patient")
LR_SCHEDULES = ("constant", "cosine")


MAX_NOISE_MULTIPLIER = 1e5  # dp_accounting's RDP fails from about 1e6 (negative divergences)


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
    secure_aggregation: 'none' (a plain integer sum of the codes: TFF's
      runtime has no protocol), 'secagg' (masked sums, Bonawitz et al. 2017)
      or 'secagg_plus' (k neighbours, Bell et al. 2020); fscdp only.
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
  secure_aggregation: str = "none"
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
    self._check_choices()
    self._check_optimisation()
    self._check_dp()
    self._check_federation()
    self._check_secagg()
    self._check_init()
    self._check_tf_privacy()

  def _bad(self, name, why):
    raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

  def _check_choices(self):
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
        self._bad(name, f"must be one of {choices}")

  def _check_optimisation(self):
    bad = self._bad
    if self.rounds < 1:
      bad("rounds", "must be >= 1")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      bad("learning_rate", "must be > 0")
    if not 0.0 <= self.momentum < 1.0:
      bad("momentum", "must be in [0, 1)")
    if self.batch_size < 1:
      bad("batch_size", "must be >= 1")
    if self.local_epochs < 1:
      bad("local_epochs", "must be >= 1")
    if self.eval_every < 1:
      bad("eval_every", "must be >= 1")
    if not 0.0 <= self.ema_decay < 1.0:
      bad("ema_decay", "must be in [0, 1)")
    if self.augmentations < 0:
      bad("augmentations", "must be >= 0")

  def _check_dp(self):
    bad = self._bad
    if not 0.0 < self.sampling_prob <= 1.0:
      bad("sampling_prob", "q must be in (0, 1]")
    if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
      bad("noise_multiplier", "sigma must be >= 0")
    if self.noise_multiplier > MAX_NOISE_MULTIPLIER:
      bad(
        "noise_multiplier",
        f"above {MAX_NOISE_MULTIPLIER:g} the noise drowns every gradient (epsilon is 0 to "
        "float precision) and the RDP accountant's arithmetic fails; lower it",
      )
    if not (self.l2_norm_clip > 0 and math.isfinite(self.l2_norm_clip)):
      bad("l2_norm_clip", "C must be > 0")
    if not 0.0 < self.delta < 1.0:
      bad("delta", "must be in (0, 1)")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      bad("target_epsilon", "must be > 0")
    if self.secure_sum_bound is not None and not self.secure_sum_bound > 0:
      bad("secure_sum_bound", "must be > 0")

  def _check_federation(self):
    bad = self._bad
    if not 0.0 < self.client_fraction <= 1.0:
      bad("client_fraction", "must be in (0, 1]")
    if not 0.0 <= self.dropout_prob < 1.0:
      bad("dropout_prob", "must be in [0, 1)")
    if self.min_surviving_hospitals is not None and self.min_surviving_hospitals < 1:
      bad("min_surviving_hospitals", "must be >= 1")
    if self.assumed_colluders < 0:
      bad("assumed_colluders", "must be >= 0")
    if (self.assumed_colluders or self.provision_for_colluders) and self.setting != "fscdp":
      bad("assumed_colluders", "applies to fscdp only")
    for entry in self.dropout_schedule:
      if len(entry) != 2 or int(entry[0]) < 1 or any(int(h) < 0 for h in entry[1]):
        bad("dropout_schedule", "entries must be (round >= 1, (hospital >= 0, ...))")

  def _check_secagg(self):
    bad = self._bad
    if self.secure_aggregation != "none" and self.setting != "fscdp":
      bad("secure_aggregation", "applies to fscdp only (the other settings send no secure sum)")
    if self.secagg_threshold is not None and self.secagg_threshold < 2:
      bad("secagg_threshold", "must be >= 2: with t = 1 any single holder recovers the keys")
    for name in (
      "secagg_adversarial_fraction",
      "secagg_dropout_rate",
      "secagg_unmask_dropout_prob",
    ):
      if not 0.0 <= getattr(self, name) < 1.0:
        bad(name, "must be in [0, 1)")

  def _check_init(self):
    if not (self.trainable in ("all", "head") or self.trainable.startswith("from:")):
      self._bad("trainable", "expected all, head, or from:<layer>")
    if self.reinit_head and not self.init_weights:
      self._bad("reinit_head", "needs --init_weights (there is no head to replace otherwise)")

  def _check_tf_privacy(self):
    if not (self.setting == "cdp" and self.cdp_impl == "tf_privacy"):
      return
    if self.lr_schedule != "constant":
      self._bad("lr_schedule", "is not available with --cdp_impl=tf_privacy")
    if self.hardened_noise:
      self._bad(
        "hardened_noise", "is not available with --cdp_impl=tf_privacy (TF Privacy draws its own)"
      )
    if self.augmentations:
      self._bad("augmentations", "is not available with --cdp_impl=tf_privacy")
    if self.privacy_unit == "patient":
      self._bad("privacy_unit", "patient is not available with --cdp_impl=tf_privacy (use ours)")

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

  def epochs_after(self, rounds: int) -> float:
    """Epochs of training data seen after `rounds` rounds (the one definition)."""
    if self.setting == "cdp" and self.cdp_impl == "tf_privacy":
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
    if self.setting == "fscdp" and self.secure_aggregation != "none":
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

  def secagg_config(self, num_hospitals: int):
    """The run's SecAggConfig (ValueError for parameters it cannot cover)."""
    from dopamine_tff.secagg import protocol

    return protocol.SecAggConfig(
      self.secure_aggregation,
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
