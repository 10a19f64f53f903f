"""SecAgg+'s parameters from the threat model: degree, threshold, guarantee.

Bell et al. (CCS 2020) and Google's federated-compute parameter finder: the
smallest even Harary-graph degree k and Shamir threshold t that keep every
update hidden but with probability 2^-40 (SECURITY_BITS) and abort a round
but with probability 2^-20 (CORRECTNESS_BITS), for K hospitals of which a
fraction gamma is corrupted and a fraction delta drops. Against a malicious
server t must also exceed half of a secret's holders plus its corrupted
ones (:func:`malicious_threshold`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

SECURITY_BITS = 40  # statistical security of SecAgg+'s parameters (Bell et al.)
CORRECTNESS_BITS = 20  # chance of an abort when the dropout assumption holds
SMALL = 1e-14  # keeps floor(rate * K) from rounding down across an integer


def _log_disconnected(k: int, degree: int, bad: int) -> float:
  """log of a bound on P(a random Harary graph H(degree, k) loses connectivity
  when `bad` uniformly placed nodes are removed).

  Disconnecting a Harary graph takes two runs of degree/2 consecutive removed
  nodes on its ring; union bound over the k (k - degree - 1) / 2 pairs of run
  positions, each fully removed with probability C(k - degree, bad - degree)
  / C(k, bad) (Bell et al. 2020; the federated-compute finder's bound).
  """
  if degree > bad:
    return -math.inf
  pairs = math.log(k) + math.log(max(k - degree - 1, 1)) - math.log(2)
  return (
    pairs
    + math.lgamma(bad + 1)
    + math.lgamma(k - degree + 1)
    - math.lgamma(k + 1)
    - math.lgamma(bad - degree + 1)
  )


@dataclasses.dataclass(frozen=True)
class Guarantee:
  """Failure probabilities (log2) of a SecAgg instance under its assumptions."""

  security_log2: float  # P(some update exposed to server + adversaries)
  correctness_log2: float  # P(a round aborts though the dropout rate holds)

  def to_json(self) -> dict:
    def fmt(x):
      return None if x == -math.inf else round(x, 2)

    return {
      "security_failure_log2": fmt(self.security_log2),
      "correctness_failure_log2": fmt(self.correctness_log2),
    }


def _log2(p: float) -> float:
  return math.log2(p) if p > 0 else -math.inf


def guarantee(k: int, degree: int, t: int, gamma: float, delta: float) -> Guarantee:
  """The failure probabilities of (degree, t) for K=k, adversarial fraction
  gamma and dropout rate delta (union bounds over the k hospitals)."""
  adversaries = math.floor((gamma + SMALL) * k)
  survivors = math.ceil((1 - delta - SMALL) * k)
  if degree >= k - 1:  # complete graph: deterministic under the assumptions
    sec = 0.0 if adversaries >= t else -math.inf
    cor = 0.0 if survivors < t else -math.inf
    return Guarantee(sec, cor)
  log_disc = _log_disconnected(k, degree, adversaries + k - survivors)
  # A hospital is exposed when t of its neighbours are adversarial.
  p_adv = k * float(stats.hypergeom.sf(t - 1, k, adversaries, degree))
  sec = _log2(min(1.0, math.exp(log_disc) + p_adv))
  # A round aborts when fewer than t of a hospital's neighbours survive.
  p_short = k * float(stats.hypergeom.cdf(t - 1, k, survivors, degree))
  return Guarantee(sec, _log2(min(1.0, p_short)))


def adversarial_neighbours(k: int, degree: int, gamma: float) -> int:
  """t1: a bound on every hospital's corrupted neighbours that fails with
  probability at most 2^-41 (floor(gamma K) on the complete graph)."""
  adversaries = math.floor((gamma + SMALL) * k)
  if degree >= k - 1:
    return adversaries
  xs = np.arange(degree + 1)
  # The smallest x with P(adversarial neighbours > x) <= 2^-41 / k.
  return int(
    xs[stats.hypergeom(k, adversaries, degree).sf(xs) <= 2.0 ** -(SECURITY_BITS + 1) / k][0]
  )


def malicious_threshold(holders: int, corrupted: int) -> int:
  """The smallest t with 2t > holders + corrupted.

  A server that lies about who dropped asks some of a hospital's holders for
  its self-mask share and others for its private-key share. Two sets of t
  holders then share more than `corrupted` members, so an honest holder is in
  both, and an honest holder never reveals both secrets of one hospital.
  """
  return (holders + corrupted) // 2 + 1


def threshold_for(degree: int, t1: int, colluders: int, malicious: bool) -> int:
  t = max(t1 + 1, 2)
  return max(t, malicious_threshold(degree + 1, max(colluders, t1))) if malicious else t


def harary_parameters(
  k: int, gamma: float, delta: float, *, malicious: bool = False, colluders: int = 0
) -> tuple[int, int] | None:
  """The smallest even degree and its smallest threshold that meet 2^-40
  security and 2^-20 correctness (None: no degree below k - 1 does).

  For a degree: the graph of honest survivors must stay connected with
  probability 1 - 2^-41; t - 1 must bound the adversarial neighbours of
  every hospital but with probability 2^-41 (t > t1), and t the surviving
  ones but with probability 2^-20 (t <= t2). Against a malicious server t
  must also exceed (holders + t1) / 2 (malicious_threshold), which needs a
  larger degree.
  """
  adversaries = math.floor((gamma + SMALL) * k)
  survivors = math.ceil((1 - delta - SMALL) * k)
  per_event = math.log(2.0 ** -(SECURITY_BITS + 1))
  for degree in range(2, k - 1, 2):
    if _log_disconnected(k, degree, adversaries + k - survivors) >= per_event:
      continue
    t = threshold_for(degree, adversarial_neighbours(k, degree, gamma), colluders, malicious)
    # t2: the smallest x with P(surviving neighbours <= x) >= 2^-20 / k.
    xs = np.arange(degree + 1)
    ok = stats.hypergeom(k, survivors, degree).cdf(xs) >= 2.0**-CORRECTNESS_BITS / k
    t2 = int(xs[ok][0]) if ok.any() else degree
    if t <= t2:
      return degree, t
  return None
