"""Host-side draws of who takes part in a round: selection and dropouts.

These are public (the server sees who took part), so they come from the
run's `--seed` (dopamine_tff/seeds.py host streams), never from the secret
randomness. Trainers (dopamine_tff/trainers/) and the FPDP sigma calibration
(dopamine_tff/tuning.py) call the same functions, so they always agree.
"""

from __future__ import annotations

import numpy as np

from dopamine_tff import configs
from dopamine_tff import seeds


def dropped(cfg: configs.TrainConfig, round_num: int, num_hospitals: int) -> set[int]:
  """Hospitals that fail to deliver in 0-based round `round_num`."""
  out = {int(h) for r, hs in cfg.dropout_schedule if int(r) == round_num + 1 for h in hs}
  if cfg.dropout_prob > 0:
    rng = seeds.host_rng(cfg.seed, round_num, seeds.Purpose.DROPOUT)
    out |= set(np.flatnonzero(rng.uniform(size=num_hospitals) < cfg.dropout_prob).tolist())
  return {h for h in out if h < num_hospitals}


def unmask_dropped(cfg: configs.TrainConfig, round_num: int, senders) -> set[int]:
  """Hospitals of `senders` gone before answering the unmasking (secure aggregation)."""
  if cfg.secagg_unmask_dropout_prob <= 0:
    return set()
  rng = seeds.host_rng(cfg.seed, round_num, seeds.Purpose.UNMASK_DROPOUT)
  draws = rng.uniform(size=max(senders, default=-1) + 1)
  return {h for h in senders if draws[h] < cfg.secagg_unmask_dropout_prob}


def selected(cfg: configs.TrainConfig, round_num: int, num_hospitals: int) -> list[int]:
  """FedAvg's (F, FPDP) hospitals asked in a round (C: the one pooled party)."""
  fraction = 1.0 if cfg.setting == "c" else cfg.client_fraction
  m = max(1, int(round(fraction * num_hospitals)))
  rng = seeds.host_rng(cfg.seed, round_num, seeds.Purpose.SELECTION)
  return sorted(rng.choice(num_hospitals, size=m, replace=False).tolist())
