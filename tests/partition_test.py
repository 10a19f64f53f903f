"""Splitting into hospitals."""

import numpy as np
import pytest

from dopamine_tff.data import partition


@pytest.fixture
def labels():
  return np.random.default_rng(0).choice(5, size=1000, p=[0.5, 0.1, 0.25, 0.05, 0.1])


def _is_partition(parts, n):
  all_idx = np.concatenate(parts)
  return len(all_idx) == n and len(np.unique(all_idx)) == n


def test_iid_is_equal_and_deterministic(labels):
  parts = partition.partition(labels, 10, scheme="iid", seed=3)
  assert _is_partition(parts, len(labels))
  assert {len(p) for p in parts} == {100}
  again = partition.partition(labels, 10, scheme="iid", seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))
  other = partition.partition(labels, 10, scheme="iid", seed=4)
  assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_unequal_sizes_differ(labels):
  parts = partition.partition(labels, 10, scheme="unequal", seed=1)
  sizes = [len(p) for p in parts]
  assert _is_partition(parts, len(labels))
  assert max(sizes) > 2 * min(sizes)
  assert min(sizes) >= 1


def test_dirichlet_skews_labels(labels):
  counts_skew = partition.class_counts(
    labels, partition.partition(labels, 10, scheme="dirichlet", alpha=0.1, seed=2), 5
  )
  counts_iid = partition.class_counts(
    labels, partition.partition(labels, 10, scheme="iid", seed=2), 5
  )
  frac = lambda c: c / c.sum(axis=1, keepdims=True)
  # Distance of each hospital's label mix from the global mix.
  glob = np.bincount(labels, minlength=5) / len(labels)
  tv = lambda c: np.abs(frac(c) - glob).sum(axis=1).mean() / 2
  assert tv(counts_skew) > 3 * tv(counts_iid)
  assert counts_skew.sum() == len(labels)


def test_report_lists_every_hospital(labels):
  parts = partition.partition(labels, 4, seed=0)
  report = partition.format_report(partition.class_counts(labels, parts, 5))
  assert len(report.splitlines()) == 5
  assert "250" in report


def test_too_many_hospitals():
  with pytest.raises(ValueError, match="larger than the data"):
    partition.partition(np.zeros(5, int), 6)


def test_hospital_left_without_data():
  labels = np.array([0] * 10 + [1] * 10)
  with pytest.raises(ValueError, match="hospital .* was left with 0"):
    partition.partition(labels, 8, scheme="dirichlet", alpha=0.01, seed=0)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"scheme": "zipf"}, "unknown partition"),
    ({"scheme": "dirichlet", "alpha": 0}, "alpha"),
    ({"num_hospitals": 0}, "num_hospitals"),
  ],
)
def test_bad_arguments(kwargs, message):
  args = {"labels": np.zeros(10, int), "num_hospitals": 2, **kwargs}
  with pytest.raises(ValueError, match=message):
    partition.partition(**args)
