"""Shamir t-of-n: any t shares reconstruct, t-1 are refused and reveal nothing."""

import itertools
import os

import pytest

from dopamine_tff.secagg import shamir


@pytest.mark.parametrize("t,n", [(1, 1), (1, 3), (2, 2), (3, 5), (6, 10), (10, 10)])
def test_every_t_subset_reconstructs(t, n):
  secret = shamir.bytes_to_int(os.urandom(32))
  shares = shamir.split(secret, threshold=t, holders=list(range(1, n + 1)))
  for subset in itertools.islice(itertools.combinations(shares.items(), t), 50):
    assert shamir.reconstruct(dict(subset), threshold=t) == secret


def test_fewer_than_t_shares_are_refused():
  shares = shamir.split(12345, threshold=3, holders=[1, 2, 3, 4])
  with pytest.raises(shamir.NotEnoughShares, match="2 shares, the threshold is 3"):
    shamir.reconstruct({1: shares[1], 2: shares[2]}, threshold=3)


def test_t_minus_1_shares_are_consistent_with_any_secret():
  """With t-1 shares fixed, every candidate secret has a polynomial through them."""
  shares = shamir.split(7, threshold=2, holders=[1, 2])
  # Degree-1 polynomial through (1, s1) and (0, c) exists for every c: the
  # share alone does not pin the secret. Interpolating with a forged second
  # share gives the forged secret, not 7.
  forged = {1: shares[1], 2: (2 * shares[1] - 99) % shamir.PRIME}
  assert shamir.reconstruct(forged, threshold=2) == 99


def test_a_share_of_two_equal_secrets_differs():
  a = shamir.split(42, threshold=2, holders=[1, 2])
  b = shamir.split(42, threshold=2, holders=[1, 2])
  assert a[1] != b[1]  # fresh random coefficients


def test_bad_arguments():
  with pytest.raises(ValueError, match="threshold"):
    shamir.split(1, threshold=3, holders=[1, 2])
  with pytest.raises(ValueError, match="distinct"):
    shamir.split(1, threshold=1, holders=[1, 1])
  with pytest.raises(ValueError, match="secret"):
    shamir.split(shamir.PRIME, threshold=1, holders=[1])
  assert shamir.int_to_bytes(shamir.bytes_to_int(b"\x00\x01\xff"), 3) == b"\x00\x01\xff"
