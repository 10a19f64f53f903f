"""t-of-n Shamir secret sharing over the prime field GF(2^521 - 1).

A secret (an integer below the prime, e.g. a 32-byte key read as an integer) is
the constant term of a random polynomial of degree t - 1; party x (x = 1..n)
holds its value at x. Any t shares give the secret by Lagrange interpolation
at 0; fewer than t are uniformly distributed and independent of the secret
(information-theoretic), so :func:`reconstruct` refuses them rather than
return garbage. Coefficients come from the OS's CSPRNG (``secrets``).

The threshold travels with the shares (:class:`Shares`). :func:`reconstruct`
interpolates from t shares and checks every further share against that
polynomial; a share off it raises :class:`InconsistentShares` naming the
holder when one bad share explains the set (with exactly t shares nothing can
be checked: a wrong share then shifts the secret undetected, which is why the
protocol asks every responder, not just t of them). A value outside the
secret's range (``bits``) is refused the same way.

Used by the secure-aggregation protocol (dopamine_tff/secagg/protocol.py) for
each hospital's key-agreement private key and its per-round self-mask seed.
"""

from __future__ import annotations

import functools
import secrets

PRIME = 2**521 - 1  # a Mersenne prime: secrets of up to 520 bits


class NotEnoughShares(ValueError):
  """Fewer shares than the threshold: the secret is information-theoretically hidden."""


class InconsistentShares(ValueError):
  """The shares do not lie on one polynomial of degree t - 1 (a bad or forged share).

  Attributes:
    holders: the holder ids whose shares are off the polynomial, when one bad
      share explains the set; empty when it could not be attributed.
  """

  def __init__(self, message: str, holders: tuple[int, ...] = ()):
    super().__init__(message)
    self.holders = holders


class Shares(dict):
  """holder id -> share, with the threshold t they were made for."""

  def __init__(self, values, threshold: int):
    super().__init__(values)
    self.threshold = threshold

  def __repr__(self):  # shares are secrets: never in a log
    return f"Shares(t={self.threshold}, holders={sorted(self)})"

  __str__ = __repr__


def split(secret: int, *, threshold: int, holders: list[int]) -> Shares:
  """Shares of `secret` for each holder id (ids are distinct, 1 <= id < PRIME).

  Raises:
    ValueError: a bad threshold, holder id or secret.
  """
  if not 0 <= secret < PRIME:
    raise ValueError("the secret must be an integer in [0, 2**521 - 1)")
  if not 1 <= threshold <= len(holders):
    raise ValueError(f"threshold {threshold} must be in [1, {len(holders)} holders]")
  if len(set(holders)) != len(holders) or any(not 0 < h < PRIME for h in holders):
    raise ValueError(f"holder ids must be distinct positive integers, got {holders}")
  coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
  return Shares({h: _evaluate(coeffs, h) for h in holders}, threshold)


def _evaluate(coeffs: list[int], x: int) -> int:
  acc = 0
  for c in reversed(coeffs):
    acc = (acc * x + c) % PRIME
  return acc


def reconstruct(
  shares: dict[int, int],
  *,
  threshold: int | None = None,
  bits: int = 520,
  checks: int | None = None,
) -> int:
  """The secret from the t lowest-id shares, further shares checked against it.

  Only the t shares interpolated affect the result; a bad one among them puts
  the polynomial off every honest further share, so checking one honest share
  beyond t detects it.

  Args:
    shares: holder id -> share (a :class:`Shares` carries its threshold).
    threshold: t; must agree with the shares' own when they carry one.
    bits: the secret is below 2**bits (a larger value means a bad share).
    checks: how many shares beyond t to check (None: all of them).

  Raises:
    NotEnoughShares: fewer than t shares.
    InconsistentShares: the shares do not lie on one polynomial of degree t - 1,
      a share is not a field element, or the secret is out of range.
  """
  own = getattr(shares, "threshold", None)
  if threshold is None:
    threshold = own
  if threshold is None or (own is not None and own != threshold):
    raise ValueError(f"threshold {threshold} does not match the shares' own ({own})")
  if len(shares) < threshold:
    raise NotEnoughShares(f"{len(shares)} shares, the threshold is {threshold}")
  bad = [h for h, y in shares.items() if not (isinstance(y, int) and 0 <= y < PRIME)]
  if bad:
    raise InconsistentShares(f"share(s) of holder(s) {bad} are not field elements", tuple(bad))
  points = sorted(shares.items())
  if checks is not None:
    points = points[: threshold + checks]
  secret, off = _fit(points, threshold)
  if off:
    culprit = _single_culprit(points, threshold)
    raise InconsistentShares(
      f"{len(off)} of {len(points)} shares are off the polynomial of the first {threshold}"
      + (f": holder {culprit}'s share is bad" if culprit is not None else ""),
      (culprit,) if culprit is not None else (),
    )
  if secret >= 2**bits:
    raise InconsistentShares(f"the reconstructed secret exceeds {bits} bits: a share is bad")
  return secret


def _interpolate_at(points, x: int) -> int:
  """The value at x of the polynomial through `points` (Lagrange)."""
  weights = lagrange_at(tuple(p for p, _ in points), x)
  return sum(w * y for w, (_, y) in zip(weights, points)) % PRIME


def _fit(points, t: int):
  """(secret from the first t points, the further points off their polynomial)."""
  base = points[:t]
  off = [x for x, y in points[t:] if _interpolate_at(base, x) != y]
  return _interpolate_at(base, 0), off


def _single_culprit(points, t: int):
  """The holder whose removal makes the rest consistent, if exactly one does."""
  if len(points) < t + 2:  # t + 1 points: any one of them could be the bad one
    return None
  found = [x for x, _ in points if not _fit([p for p in points if p[0] != x], t)[1]]
  return found[0] if len(found) == 1 else None


def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
  """Lagrange basis values at 0 for the points `xs`."""
  return lagrange_at(xs, 0)


@functools.lru_cache(maxsize=4096)
def lagrange_at(xs: tuple[int, ...], x: int) -> tuple[int, ...]:
  """Lagrange basis values at x for the points `xs` (cached: one set of
  responders unmasks every secret of a round)."""
  out = []
  for i, xi in enumerate(xs):
    num, den = 1, 1
    for j, xj in enumerate(xs):
      if i != j:
        num = num * (x - xj) % PRIME
        den = den * (xi - xj) % PRIME
    out.append(num * pow(den, -1, PRIME) % PRIME)
  return tuple(out)


def bytes_to_int(data: bytes) -> int:
  if len(data) > 64:
    raise ValueError(f"at most 64 bytes fit below the prime, got {len(data)}")
  return int.from_bytes(data, "big")


def int_to_bytes(value: int, length: int) -> bytes:
  return value.to_bytes(length, "big")
