"""Splitting a labelled data set into K hospitals.

Three schemes, all deterministic from a seed:

* ``iid``: shuffle and deal out equal shares (the paper's split).
* ``unequal``: IID labels, hospital sizes drawn from a Dirichlet(1) over
  hospitals (every hospital keeps at least ``min_size`` examples).
* ``dirichlet``: label skew; for each class the share of every hospital is drawn
  from Dirichlet(alpha) (Hsu et al. 2019). Small alpha means strong skew.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("iid", "unequal", "dirichlet")


def _check(num_examples: int, num_hospitals: int) -> None:
  if num_hospitals < 1:
    raise ValueError(f"num_hospitals must be >= 1, got {num_hospitals}")
  if num_hospitals > num_examples:
    raise ValueError(
      f"num_hospitals={num_hospitals} is larger than the data "
      f"({num_examples} examples): some hospital would have no data"
    )


def partition(
  labels: np.ndarray,
  num_hospitals: int,
  *,
  scheme: str = "iid",
  alpha: float = 0.5,
  min_size: int = 1,
  seed: int = 0,
) -> list[np.ndarray]:
  """Returns one sorted index array per hospital.

  Raises:
    ValueError: unknown scheme, alpha <= 0, K > number of examples, or a
      hospital left with fewer than ``min_size`` examples.
  """
  labels = np.asarray(labels)
  n = len(labels)
  _check(n, num_hospitals)
  rng = np.random.default_rng(seed)
  if scheme == "iid":
    parts = np.array_split(rng.permutation(n), num_hospitals)
  elif scheme == "unequal":
    if min_size * num_hospitals > n:
      raise ValueError(f"cannot give {num_hospitals} hospitals {min_size} examples each from {n}")
    shares = rng.dirichlet(np.ones(num_hospitals))
    extra = np.floor(shares * (n - min_size * num_hospitals)).astype(int)
    extra[: (n - min_size * num_hospitals) - extra.sum()] += 1
    bounds = np.cumsum(extra + min_size)[:-1]
    parts = np.split(rng.permutation(n), bounds)
  elif scheme == "dirichlet":
    if alpha <= 0:
      raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    buckets: list[list[int]] = [[] for _ in range(num_hospitals)]
    for cls in np.unique(labels):
      idx = rng.permutation(np.flatnonzero(labels == cls))
      shares = rng.dirichlet(np.full(num_hospitals, alpha))
      cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
      for h, chunk in enumerate(np.split(idx, cuts)):
        buckets[h].extend(chunk.tolist())
    parts = [np.array(b, dtype=np.int64) for b in buckets]
  else:
    raise ValueError(f"unknown partition scheme {scheme!r}; expected one of {SCHEMES}")
  parts = [np.sort(p) for p in parts]
  for h, p in enumerate(parts):
    if len(p) < min_size:
      raise ValueError(
        f"hospital {h} was left with {len(p)} examples (< {min_size}) by the "
        f"{scheme!r} split; use fewer hospitals or a larger alpha"
      )
  return parts


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
  """[K, num_classes] matrix of per-hospital class counts."""
  return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def format_report(counts: np.ndarray) -> str:
  """A plain-text table of the per-hospital class counts."""
  k, c = counts.shape
  head = "hospital " + " ".join(f"{'c' + str(j):>6}" for j in range(c)) + "  total"
  rows = [
    f"{h:>8} " + " ".join(f"{v:>6}" for v in counts[h]) + f"  {counts[h].sum():>5}"
    for h in range(k)
  ]
  return "\n".join([head, *rows])
