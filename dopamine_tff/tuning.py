"""Hyper-parameter search for the five settings: the grid, the draws, the trial configs.

Pure functions used by experiments/tune.py (the binary runs the trials). Every
setting gets the same number of seeded draws from its documented grid; a
private trial keeps the preset's epochs and is calibrated to a fixed target
epsilon (sigma follows from q, the steps and the target).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import participation
from dopamine_tff import seeds

# The grid each setting's trials are drawn from. Epochs are fixed (the
# preset's); q for DP-SGD settings is the expected batch over N; sigma is not
# searched: it follows from q, the steps and the target epsilon.
SEARCH_SPACE = {
  "c": {
    "learning_rate": [0.01, 0.02, 0.05],
    "batch_size": [16, 32, 64],
    "lr_schedule": ["constant", "cosine"],
    "ema_decay": [0.0, 0.5],
  },
  "f": {
    "learning_rate": [0.01, 0.02, 0.05],
    "batch_size": [16, 32],
    "local_epochs": [1, 2],
    "lr_schedule": ["constant", "cosine"],
    "ema_decay": [0.0, 0.5],
  },
  "cdp": {
    "learning_rate": [0.05, 0.1, 0.2],
    "l2_norm_clip": [0.5, 1.0, 2.0],
    "sampling_prob": [0.05, 0.1],
    "lr_schedule": ["constant", "cosine"],
    "ema_decay": [0.0, 0.95],
  },
  "fpdp": {
    "learning_rate": [0.02, 0.05, 0.1],
    "l2_norm_clip": [0.5, 1.0, 2.0],
    "batch_size": [16, 32, 64],
    "lr_schedule": ["constant", "cosine"],
    "ema_decay": [0.0, 0.5],
  },
}
SEARCH_SPACE["fscdp"] = SEARCH_SPACE["cdp"]  # Dopamine gets exactly central DP-SGD's grid

# From public weights (a *_pretrained preset, or --init_weights) the features
# exist already and smaller steps tune them: at the from-scratch grid's rates
# FPDP wiped the pretrained features within two rounds (README, Public
# pretraining). Only the learning rates differ from SEARCH_SPACE.
_FINE = [0.002, 0.005, 0.01, 0.02]
PRETRAINED_SEARCH_SPACE = {
  "c": {**SEARCH_SPACE["c"], "learning_rate": _FINE},
  "f": {**SEARCH_SPACE["f"], "learning_rate": _FINE},
  "cdp": {**SEARCH_SPACE["cdp"], "learning_rate": [0.02, 0.05, 0.1]},
  "fpdp": {**SEARCH_SPACE["fpdp"], "learning_rate": _FINE},
}
PRETRAINED_SEARCH_SPACE["fscdp"] = PRETRAINED_SEARCH_SPACE["cdp"]


# Validation scores a search can choose by (experiments/tune.py --select_by).
SELECT_BY = ("accuracy", "kappa", "referable_auc")


def search_space(setting: str, pretrained: bool = False) -> dict:
  """The grid of `setting`: for a random start, or for a pretrained one."""
  return (PRETRAINED_SEARCH_SPACE if pretrained else SEARCH_SPACE)[setting]


def draw_trials(
  setting: str, trials: int, search_seed: int, pretrained: bool = False
) -> list[dict]:
  """`trials` distinct configurations of the setting's grid, seeded."""
  space = search_space(setting, pretrained)
  names = sorted(space)
  grid = [dict(zip(names, combo)) for combo in _product([space[n] for n in names])]
  # FSCDP draws central DP-SGD's trials: the two differ only in who adds the noise.
  which = "cdp" if setting == "fscdp" else setting
  rng = seeds.host_rng(search_seed, configs.SETTINGS.index(which), seeds.Purpose.SELECTION)
  order = rng.permutation(len(grid))[: min(trials, len(grid))]
  return [grid[i] for i in order]


def _product(lists):
  out = [[]]
  for values in lists:
    out = [prev + [v] for prev in out for v in values]
  return out


def trial_config(
  base: configs.TrainConfig, params: dict, data, target: float
) -> configs.TrainConfig:
  """The preset's config with the trial's choices, sized to the same epochs and epsilon."""
  cfg = dataclasses.replace(base, **params)
  epochs = base_epochs(base)
  if cfg.setting in ("cdp", "fscdp"):
    rounds = cfg.rounds_for(epochs)
    sigma = accounting.noise_multiplier_for(
      target, sampling_prob=cfg.sampling_prob, steps=rounds, delta=cfg.delta
    )
    cfg = dataclasses.replace(
      cfg,
      rounds=rounds,
      noise_multiplier=sigma,
      target_epsilon=target,
      eval_every=max(1, rounds // 20),
    )
  elif cfg.setting == "fpdp":
    rounds = cfg.rounds_for(epochs)
    sigma = fpdp_sigma(cfg, data, rounds, target)
    cfg = dataclasses.replace(
      cfg, rounds=rounds, noise_multiplier=sigma, target_epsilon=target, eval_every=2
    )
  elif cfg.setting == "f":
    cfg = dataclasses.replace(cfg, rounds=cfg.rounds_for(epochs))
  return cfg


def base_epochs(cfg: configs.TrainConfig) -> float:
  """Epochs of a preset config (what every trial keeps)."""
  return cfg.epochs_after(cfg.rounds)


def fpdp_sigma(cfg, data, rounds: int, target: float) -> float:
  """Sigma for FPDP's busiest hospital over seeds 0-4 to stay within the target.

  A hospital takes cfg.fpdp_steps(n_k) steps in each round it is selected;
  the selection (participation.selected, the trainer's own) is public and seeded, so
  the busiest hospital's count is known.
  """
  k = len(data.hospitals)
  worst = 0
  for seed in range(5):
    counts = np.zeros(k, int)
    at_seed = dataclasses.replace(cfg, seed=seed)
    for r in range(rounds):
      counts[participation.selected(at_seed, r, k)] += 1
    worst = max(worst, int(counts.max()))
  q, per_round = cfg.fpdp_steps(min(len(h) for h in data.hospitals))
  steps = worst * per_round
  return accounting.noise_multiplier_for(target, sampling_prob=q, steps=steps, delta=cfg.delta)


def ablation_variants(setting: str, chosen: dict) -> list[tuple[str, dict]]:
  """(name, params) pairs: the chosen configuration and one change at a time."""
  params = {k: v for k, v in chosen.items() if k in SEARCH_SPACE[setting]}
  out = [("chosen", dict(params))]
  if "ema_decay" in params:
    other = 0.0 if params["ema_decay"] > 0 else max(SEARCH_SPACE[setting]["ema_decay"])
    out.append((f"ema_decay={other}", dict(params, ema_decay=other)))
  flip = "constant" if params.get("lr_schedule") == "cosine" else "cosine"
  out.append((f"lr_schedule={flip}", dict(params, lr_schedule=flip)))
  if "sampling_prob" in params:
    other = 0.05 if params["sampling_prob"] == 0.1 else 0.1
    out.append((f"sampling_prob={other} (expected batch)", dict(params, sampling_prob=other)))
  if "batch_size" in params:
    other = 64 if params["batch_size"] != 64 else 32
    out.append((f"batch_size={other}", dict(params, batch_size=other)))
  out.append(("augmentations=2", dict(params, augmentations=2)))
  return out


def choose(rows: list[dict], select_by: str = "accuracy") -> dict:
  """The best trial of one setting by its validation `select_by` (SELECT_BY).

  Args:
    rows: the setting's trials, each with ``param_*`` choices, ``trial``,
      ``noise_multiplier`` and ``validation_<score>`` values.
    select_by: the score that decides.

  Returns:
    The winner's parameters, trial, scores and ``selected_by``.

  Raises:
    ValueError: no trial measured the score (kappa and AUC need DR grades).
  """
  key = f"validation_{select_by}"
  scored = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
  if not scored:
    raise ValueError(
      f"--select_by={select_by}: no trial measured it (kappa and referable_auc need DR grades)"
    )
  top = max(scored, key=lambda r: r[key])
  scores = ("validation_accuracy", "validation_kappa", "validation_referable_auc")
  return {
    **{k[len("param_") :]: v for k, v in top.items() if k.startswith("param_")},
    "trial": top["trial"],
    "selected_by": f"validation {select_by}",
    **{k: top.get(k) for k in scores},
    "noise_multiplier_at_tuning": top["noise_multiplier"],
  }
