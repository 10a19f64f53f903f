"""t-of-n Shamir secret sharing over the prime field GF(2^521 - 1).

A secret (an integer below the prime, e.g. a 32-byte key read as an integer) is
the constant term of a random polynomial of degree t - 1; party x (x = 1..n)
holds its value at x. Any t shares give the secret by Lagrange interpolation
at 0; fewer than t are uniformly distributed and independent of the secret
(information-theoretic), so :func:`reconstruct` refuses them rather than
return garbage. Coefficients come from the OS's CSPRNG (``secrets``).

Used by the secure-aggregation protocol (dopamine_tff/secagg/protocol.py) for
each hospital's key-agreement private key and its per-round self-mask seed.
"""

from __future__ import annotations

import functools
import secrets

PRIME = 2**521 - 1  # a Mersenne prime: secrets of up to 520 bits


class NotEnoughShares(ValueError):
  """Fewer shares than the threshold: the secret is information-theoretically hidden."""


def split(secret: int, *, threshold: int, holders: list[int]) -> dict[int, int]:
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
  return {h: _evaluate(coeffs, h) for h in holders}


def _evaluate(coeffs: list[int], x: int) -> int:
  acc = 0
  for c in reversed(coeffs):
    acc = (acc * x + c) % PRIME
  return acc


def reconstruct(shares: dict[int, int], *, threshold: int) -> int:
  """The secret from at least `threshold` shares (uses the `threshold` lowest ids).

  Raises:
    NotEnoughShares: fewer than `threshold` shares.
  """
  if len(shares) < threshold:
    raise NotEnoughShares(f"{len(shares)} shares, the threshold is {threshold}")
  points = sorted(shares.items())[:threshold]
  weights = lagrange_at_zero(tuple(x for x, _ in points))
  return sum(w * y for w, (_, y) in zip(weights, points)) % PRIME


@functools.lru_cache(maxsize=64)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
  """Lagrange basis values at 0 for the points `xs` (cached: one set of
  responders unmasks every secret of a round)."""
  out = []
  for i, xi in enumerate(xs):
    num, den = 1, 1
    for j, xj in enumerate(xs):
      if i != j:
        num = num * (-xj) % PRIME
        den = den * (xi - xj) % PRIME
    out.append(num * pow(den, -1, PRIME) % PRIME)
  return tuple(out)


def bytes_to_int(data: bytes) -> int:
  if len(data) > 64:
    raise ValueError(f"at most 64 bytes fit below the prime, got {len(data)}")
  return int.from_bytes(data, "big")


def int_to_bytes(value: int, length: int) -> bytes:
  return value.to_bytes(length, "big")
