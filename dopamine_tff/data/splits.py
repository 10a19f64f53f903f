"""Splitting a source: the held-out test set, hospitals, the validation carve.

A group (a patient) always falls wholly on one side of a split and into one
hospital, so patient-level privacy and evaluation hold. Three ways to split:
* ``given_split``: the data names each example's hospital (a ``hospital``
  column or one folder per hospital); a test set is held out of each;
* ``dealt_split``: a test set is held out, the rest dealt to hospitals by
  ``partition`` (iid, unequal or Dirichlet label skew);
* ``validation_carve``: for tuning, the evaluation set is carved out of every
  hospital's training share (the test set is never seen).
"""

from __future__ import annotations

import numpy as np

from dopamine_tff.data import partition as partition_lib
from dopamine_tff.data import sources


def split_test(
  labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Stratified train/test index split; a group (patient) falls wholly on one side."""
  rng = np.random.default_rng(seed + 7919)
  if groups is None:
    groups = np.arange(len(labels))
  uniq, first = np.unique(groups, return_index=True)
  group_labels = labels[first]
  test_groups = []
  for cls in np.unique(group_labels):
    idx = rng.permutation(np.flatnonzero(group_labels == cls))
    test_groups.extend(uniq[idx[: int(round(fraction * len(idx)))]].tolist())
  is_test = np.isin(groups, np.array(test_groups, dtype=groups.dtype))
  if not is_test.any():
    raise ValueError(
      f"test_fraction={fraction:g} leaves no test example: {fraction:g} of each class of the "
      f"{len(uniq)} units rounds to 0; raise --test_fraction"
    )
  return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def partition(labels, groups, config) -> list[np.ndarray]:
  """Hospital index arrays; a group (patient) goes wholly to one hospital."""
  if groups is None:
    groups = np.arange(len(labels))
  _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
  parts = partition_lib.partition(
    labels[first],
    config.num_hospitals,
    scheme=config.partition,
    alpha=config.dirichlet_alpha,
    seed=config.seed,
  )
  return [np.flatnonzero(np.isin(inverse, p)) for p in parts]


def _of(groups, idx):
  return None if groups is None else groups[idx]


def given_split(raw: sources.Raw, config) -> tuple[list[np.ndarray], np.ndarray]:
  """(hospital train indices, test indices) when the data names the hospitals."""
  found = int(raw.hospital.max()) + 1
  if found != config.num_hospitals:
    raise sources.DataError(
      f"the data names {found} hospitals (hospital column / hospital_dirs) but "
      f"num_hospitals={config.num_hospitals}; pass --num_hospitals={found}"
    )
  if config.partition != "iid":
    raise ValueError(
      f"partition={config.partition!r}: the data names each example's hospital, so the "
      "split is given; drop --partition"
    )
  train_idx, test_idx = [], []
  for k in range(found):
    own = np.flatnonzero(raw.hospital == k)
    tr, te = split_test(
      raw.labels[own], config.test_fraction, config.seed + k, _of(raw.patients, own)
    )
    if len(tr) == 0:
      raise sources.DataError(
        f"hospital {k} has {len(own)} examples: none left after the test split"
      )
    train_idx.append(own[tr])
    test_idx.append(own[te])
  return train_idx, np.sort(np.concatenate(test_idx))


def dealt_split(raw: sources.Raw, config) -> tuple[list[np.ndarray], np.ndarray]:
  """(hospital train indices, test indices): a test set held out, the rest dealt."""
  train, test = split_test(raw.labels, config.test_fraction, config.seed, raw.patients)
  parts = partition(raw.labels[train], _of(raw.patients, train), config)
  return [train[p] for p in parts], test


def validation_carve(raw: sources.Raw, parts, config) -> tuple[list[np.ndarray], np.ndarray]:
  """(hospital train indices, validation indices) carved out of every hospital."""
  kept, held = [], []
  for k, p in enumerate(parts):
    tr, va = split_test(
      raw.labels[p], config.validation_fraction, config.seed + 104729 + k, _of(raw.patients, p)
    )
    kept.append(p[tr])
    held.append(p[va])
  return kept, np.sort(np.concatenate(held))
