"""What a TrainConfig refuses, field by field, when it is built.

Each check raises ValueError naming the field, its value and why
(``<field>=<value>: <why>``), before any data is read. The checks against
the number of hospitals and the data are TrainConfig.check_hospitals and
configs.check_compatible.
"""

from __future__ import annotations

import functools
import math

# dp_accounting's RDP fails from about 1e6 (negative divergences).
MAX_NOISE_MULTIPLIER = 1e5


def check_train(cfg) -> None:
  """Every range and combination check of a TrainConfig (ValueError for the
  first that fails); its choices are checked by TrainConfig itself."""
  for check in (_optimisation, _dp, _federation, _secagg, _init, _tf_privacy):
    check(cfg)


def _bad(cfg, name, why):
  raise ValueError(f"{name}={getattr(cfg, name)!r}: {why}")


def _optimisation(cfg):
  bad = functools.partial(_bad, cfg)
  if cfg.rounds < 1:
    bad("rounds", "must be >= 1")
  if not (cfg.learning_rate > 0 and math.isfinite(cfg.learning_rate)):
    bad("learning_rate", "must be > 0")
  if not 0.0 <= cfg.momentum < 1.0:
    bad("momentum", "must be in [0, 1)")
  if cfg.batch_size < 1:
    bad("batch_size", "must be >= 1")
  if cfg.local_epochs < 1:
    bad("local_epochs", "must be >= 1")
  if cfg.eval_every < 1:
    bad("eval_every", "must be >= 1")
  if not 0.0 <= cfg.ema_decay < 1.0:
    bad("ema_decay", "must be in [0, 1)")
  if cfg.augmentations < 0:
    bad("augmentations", "must be >= 0")


def _dp(cfg):
  bad = functools.partial(_bad, cfg)
  if not 0.0 < cfg.sampling_prob <= 1.0:
    bad("sampling_prob", "q must be in (0, 1]")
  if not (cfg.noise_multiplier >= 0 and math.isfinite(cfg.noise_multiplier)):
    bad("noise_multiplier", "sigma must be >= 0")
  if cfg.noise_multiplier > MAX_NOISE_MULTIPLIER:
    bad(
      "noise_multiplier",
      f"above {MAX_NOISE_MULTIPLIER:g} the noise drowns every gradient (epsilon is 0 to "
      "float precision) and the RDP accountant's arithmetic fails; lower it",
    )
  if not (cfg.l2_norm_clip > 0 and math.isfinite(cfg.l2_norm_clip)):
    bad("l2_norm_clip", "C must be > 0")
  if not 0.0 < cfg.delta < 1.0:
    bad("delta", "must be in (0, 1)")
  if cfg.target_epsilon is not None and not cfg.target_epsilon > 0:
    bad("target_epsilon", "must be > 0")
  if cfg.secure_sum_bound is not None and not cfg.secure_sum_bound > 0:
    bad("secure_sum_bound", "must be > 0")


def _federation(cfg):
  bad = functools.partial(_bad, cfg)
  if not 0.0 < cfg.client_fraction <= 1.0:
    bad("client_fraction", "must be in (0, 1]")
  if not 0.0 <= cfg.dropout_prob < 1.0:
    bad("dropout_prob", "must be in [0, 1)")
  if cfg.min_surviving_hospitals is not None and cfg.min_surviving_hospitals < 1:
    bad("min_surviving_hospitals", "must be >= 1")
  if cfg.assumed_colluders < 0:
    bad("assumed_colluders", "must be >= 0")
  if (cfg.assumed_colluders or cfg.provision_for_colluders) and cfg.setting != "fscdp":
    bad("assumed_colluders", "applies to fscdp only")
  for entry in cfg.dropout_schedule:
    if len(entry) != 2 or int(entry[0]) < 1 or any(int(h) < 0 for h in entry[1]):
      bad("dropout_schedule", "entries must be (round >= 1, (hospital >= 0, ...))")


def _secagg(cfg):
  bad = functools.partial(_bad, cfg)
  if cfg.secure_aggregation not in ("auto", "none") and cfg.setting != "fscdp":
    bad("secure_aggregation", "applies to fscdp only (the other settings send no secure sum)")
  if cfg.secagg_threshold is not None and cfg.secagg_threshold < 2:
    bad("secagg_threshold", "must be >= 2: with t = 1 any single holder recovers the keys")
  for name in (
    "secagg_adversarial_fraction",
    "secagg_dropout_rate",
    "secagg_unmask_dropout_prob",
  ):
    if not 0.0 <= getattr(cfg, name) < 1.0:
      bad(name, "must be in [0, 1)")


def _init(cfg):
  if not (cfg.trainable in ("all", "head") or cfg.trainable.startswith("from:")):
    _bad(cfg, "trainable", "expected all, head, or from:<layer>")
  if cfg.reinit_head and not cfg.init_weights:
    _bad(cfg, "reinit_head", "needs --init_weights (there is no head to replace otherwise)")


def _tf_privacy(cfg):
  if not cfg.tf_privacy_baseline:
    return
  if cfg.lr_schedule != "constant":
    _bad(cfg, "lr_schedule", "is not available with --cdp_impl=tf_privacy")
  if cfg.hardened_noise:
    _bad(
      cfg,
      "hardened_noise",
      "is not available with --cdp_impl=tf_privacy (TF Privacy draws its own)",
    )
  if cfg.augmentations:
    _bad(cfg, "augmentations", "is not available with --cdp_impl=tf_privacy")
  if cfg.privacy_unit == "patient":
    _bad(cfg, "privacy_unit", "patient is not available with --cdp_impl=tf_privacy (use ours)")
