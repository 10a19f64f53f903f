"""Privacy accounting: DP events in, epsilon out. No TensorFlow here.

Mechanisms describe what they did as ``dp_accounting`` DpEvents (a DP-SGD step
with Poisson sampling is ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``);
a ``PrivacyLedger`` composes the events round by round with dp_accounting's
Renyi-DP accountant (the accounting path of TensorFlow Privacy) or its PLD
accountant, and reports epsilon at a fixed delta.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math

import dp_accounting
from dp_accounting import pld as pld_lib
from dp_accounting import rdp as rdp_lib
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np

ACCOUNTANTS = ("rdp", "pld")
PLD_DISCRETIZATION = 1e-4
# Orders of TF Privacy's compute_dp_sgd_privacy plus a finer grid.
RDP_ORDERS = tuple(
  [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """One kind of DP-SGD step, repeated ``count`` times.

  Attributes:
    sampling_prob: Poisson sampling probability q in (0, 1].
    noise_multiplier: std of the noise on the sum divided by the clip norm.
    count: how many such steps.
  """

  sampling_prob: float
  noise_multiplier: float
  count: int = 1

  def __post_init__(self):
    if not 0.0 < self.sampling_prob <= 1.0:
      raise ValueError(f"sampling_prob must be in (0, 1], got {self.sampling_prob}")
    if self.noise_multiplier < 0:
      raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
    if self.count < 0:
      raise ValueError(f"count must be >= 0, got {self.count}")

  def event(self) -> dp_accounting.DpEvent:
    if self.noise_multiplier == 0:
      return dp_accounting.NonPrivateDpEvent()
    step: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(self.noise_multiplier)
    if self.sampling_prob < 1.0:
      step = dp_accounting.PoissonSampledDpEvent(self.sampling_prob, step)
    return dp_accounting.SelfComposedDpEvent(step, self.count)


def make_accountant(kind: str = "rdp"):
  if kind == "rdp":
    return rdp_lib.RdpAccountant(list(RDP_ORDERS))
  if kind == "pld":
    return pld_lib.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
  raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {kind!r}")


def epsilon_of(steps: list[StepSpec], delta: float, kind: str = "rdp") -> float:
  """Epsilon of a composition of steps, computed from scratch."""
  acc = make_accountant(kind)
  acc.compose(dp_accounting.ComposedDpEvent([s.event() for s in steps]))
  return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=1024)
def _rdp_of_one_step(sampling_prob: float, noise_multiplier: float) -> np.ndarray:
  """RDP curve (over RDP_ORDERS) of one step, cached: RDP composes by addition.

  dp_accounting exposes no getter for the curve, so we read the accountant's
  ``_rdp`` after composing one event; tests check the ledger against a fresh
  accountant computing the whole composition.
  """
  acc = make_accountant("rdp")
  acc.compose(StepSpec(sampling_prob, noise_multiplier, 1).event())
  return np.array(acc._rdp, dtype=np.float64)  # noqa: SLF001


@functools.lru_cache(maxsize=256)
def _pld_of_one_step(sampling_prob: float, noise_multiplier: float):
  """The privacy-loss distribution of one step (the costly part), cached."""
  return pld_lib.privacy_loss_distribution.from_gaussian_mechanism(
    noise_multiplier,
    sampling_prob=sampling_prob,
    value_discretization_interval=PLD_DISCRETIZATION,
    use_connect_dots=True,
  )


def _pld_epsilon(groups, delta: float) -> float:
  composed = None
  for (q, sigma), count in sorted(groups.items()):
    part = _pld_of_one_step(q, sigma).self_compose(count)
    composed = part if composed is None else composed.compose(part)
  return float(composed.get_epsilon_for_delta(delta))


class PrivacyLedger:
  """Composes each round's DP event as it happens; reports epsilon.

  The ledger sees only events (numbers), never tensors or data. It keeps the
  RDP curve (a vector addition per round) and the steps grouped by kind, from
  which the PLD epsilon is composed when asked for (cached per step kind). It
  can be saved as a list of StepSpecs and rebuilt on resume.

  Attributes:
    kind: the accountant ``epsilon()`` uses by default ('rdp' or 'pld').
  """

  def __init__(self, delta: float, kind: str = "rdp"):
    if not 0.0 < delta < 1.0:
      raise ValueError(f"delta must be in (0, 1), got {delta}")
    make_accountant(kind)  # validates kind
    self.delta = delta
    self.kind = kind
    self.steps: list[StepSpec] = []
    self._rdp = np.zeros(len(RDP_ORDERS))
    self._groups: collections.Counter = collections.Counter()
    self._non_private = False
    self._cache: dict[str, float] = {}

  def record(self, step: StepSpec) -> None:
    self.steps.append(step)
    self._cache = {}
    if step.count == 0:
      return
    if step.noise_multiplier == 0:
      self._non_private = True
      return
    self._groups[(step.sampling_prob, step.noise_multiplier)] += step.count
    self._rdp = self._rdp + step.count * _rdp_of_one_step(step.sampling_prob, step.noise_multiplier)

  def _epsilon_of(self, rdp: np.ndarray, groups, kind: str) -> float:
    if self._non_private:
      return math.inf
    if not groups:
      return 0.0
    if kind == "rdp":
      return float(rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, rdp, self.delta)[0])
    return _pld_epsilon(groups, self.delta)

  def epsilon(self, kind: str | None = None) -> float:
    """Epsilon so far (inf after a noiseless step, 0 before any step)."""
    kind = kind or self.kind
    if kind not in self._cache:
      self._cache[kind] = self._epsilon_of(self._rdp, self._groups, kind)
    return self._cache[kind]

  def epsilon_if(self, step: StepSpec, kind: str | None = None) -> float:
    """Epsilon the ledger would report after also recording `step`."""
    if step.count and step.noise_multiplier == 0:
      return math.inf
    groups = collections.Counter(self._groups)
    rdp = self._rdp
    if step.count:
      groups[(step.sampling_prob, step.noise_multiplier)] += step.count
      rdp = rdp + step.count * _rdp_of_one_step(step.sampling_prob, step.noise_multiplier)
    return self._epsilon_of(rdp, groups, kind or self.kind)

  def to_json(self) -> dict:
    return {
      "delta": self.delta,
      "kind": self.kind,
      "steps": [dataclasses.asdict(s) for s in self.steps],
    }

  @classmethod
  def from_json(cls, blob: dict) -> PrivacyLedger:
    ledger = cls(blob["delta"], blob["kind"])
    for s in blob["steps"]:
      ledger.record(StepSpec(**s))
    return ledger


ALL = "all"  # every patient, against a server with no colluding hospital
COLLUDERS = "colluders"  # the same patients, against a server with c colluding hospitals


class Parties:
  """The run's privacy parties, one ledger each; the run reports the worst.

  Dopamine and CDP protect every patient with one guarantee (``ALL``; with
  assumed colluders also ``COLLUDERS``). In FPDP each hospital's data is
  protected only by its own noise and steps, so each hospital (named by its
  index) is a party. A non-private setting has none and reports inf.
  """

  def __init__(self, names, delta: float, kind: str = "rdp", private: bool = True):
    self.private = private
    self.ledgers = {name: PrivacyLedger(delta, kind) for name in names}

  def record(self, steps: dict) -> None:
    """Records a round's steps: party name -> StepSpec."""
    for party, step in steps.items():
      self.ledgers[party].record(step)

  def epsilon(self, kind: str | None = None) -> float:
    """The worst party's epsilon (inf when not private, 0 with no party)."""
    if not self.private:
      return math.inf
    return max((lg.epsilon(kind) for lg in self.ledgers.values()), default=0.0)

  def epsilon_if(self, steps: dict) -> float:
    """The worst epsilon over the parties of `steps` after also recording them."""
    return max((self.ledgers[p].epsilon_if(step) for p, step in steps.items()), default=0.0)

  def would_exceed(self, steps: dict, target: float | None) -> bool:
    """Whether recording `steps` would take any party beyond `target` (None: never)."""
    if target is None:
      return False
    return any(self.ledgers[p].epsilon_if(step) > target for p, step in steps.items())

  def rounds_within(self, future: list[dict], target: float | None) -> int:
    """How many of the `future` rounds (each party -> StepSpec), recorded in order, keep
    every party within `target`: the round the budget stops a run before is the next one.

    Exact for those steps (epsilon only grows with more steps, so a bisection over
    prefixes finds it); the ledgers are not changed. All of them with no target.
    """
    if target is None:
      return len(future)

    def fits(n: int) -> bool:
      for party, ledger in self.ledgers.items():
        steps = [r[party] for r in future[:n] if party in r]
        if not steps:
          continue
        trial = PrivacyLedger(ledger.delta, ledger.kind)
        for step in ledger.steps + steps:
          trial.record(step)
        if trial.epsilon() > target:
          return False
      return True

    lo, hi = 0, len(future)  # fits(lo); find the largest n with fits(n)
    if fits(hi):
      return hi
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo

  def to_json(self) -> dict:
    return {p: lg.to_json() for p, lg in self.ledgers.items()}

  def restore(self, blob: dict) -> None:
    """Replaces the ledgers by those saved with ``to_json``."""
    self.ledgers.update({p: PrivacyLedger.from_json(b) for p, b in blob.items()})


def _finite_or_none(x: float):
  return x if math.isfinite(x) else None


def privacy_summary(
  parties: Parties,
  *,
  delta: float,
  rounds_run: int,
  reported_kinds=(),
  overflow_per_round: float | None = None,
  assumed_colluders: int = 0,
) -> dict:
  """The privacy facts of a run's summary.json.

  Args:
    parties: the run's ledgers.
    delta: the accounted delta.
    rounds_run: rounds run (each could wrap the secure sum around).
    reported_kinds: accountants reported besides the budget's ('rdp', 'pld').
    overflow_per_round: the secure sum's wrap-around probability per round
      (None: no secure sum).
    assumed_colluders: c of the COLLUDERS party.
  """
  epsilon = _finite_or_none(parties.epsilon())
  out = {
    "epsilon": epsilon,
    **{f"epsilon_{kind}": _finite_or_none(parties.epsilon(kind)) for kind in reported_kinds},
    "delta": delta if parties.private else None,
    "ledgers": parties.to_json(),
  }
  if overflow_per_round is not None and epsilon is not None:
    # The released sums equal the accounted mechanism's post-processing except
    # when a sum wraps around (probability <= overflow per round); that adds
    # (1 + e^epsilon) * rounds * overflow to delta.
    extra = (1 + math.exp(min(epsilon, 700))) * rounds_run * overflow_per_round
    out["secure_sum_overflow_per_round"] = overflow_per_round
    out["delta_with_overflow"] = delta + extra
  if COLLUDERS in parties.ledgers:  # epsilon against c = 0 and the assumed c
    out["assumed_colluders"] = assumed_colluders
    out["epsilon_no_collusion"] = _finite_or_none(parties.ledgers[ALL].epsilon())
    out["epsilon_colluders"] = _finite_or_none(parties.ledgers[COLLUDERS].epsilon())
  return out


def noise_multiplier_for(
  target_epsilon: float, *, sampling_prob: float, steps: int, delta: float, kind: str = "rdp"
) -> float:
  """Smallest noise multiplier whose `steps` DP-SGD steps stay within epsilon.

  Raises:
    ValueError: for impossible arguments.
  """
  if target_epsilon <= 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  StepSpec(sampling_prob, 1.0, steps)  # validates q

  def make_event(sigma):
    return StepSpec(sampling_prob, sigma, steps).event()

  if kind == "pld":
    # RDP's epsilon bounds PLD's from above, so RDP's sigma bounds PLD's: search
    # below it only. Starting near sigma 0.05 (as for RDP) builds PLDs of
    # enormous support: MemoryError under 6 GB, 21 GB unbounded (issue 22).
    high = noise_multiplier_for(
      target_epsilon, sampling_prob=sampling_prob, steps=steps, delta=delta, kind="rdp"
    )
    low = high / 2
    if epsilon_of([StepSpec(sampling_prob, low, steps)], delta, "pld") <= target_epsilon:
      return low  # rare: within a factor 2 is all this bound promises
    bracket = dp_accounting.ExplicitBracketInterval(low, high)
  else:
    bracket = dp_accounting.LowerEndpointAndGuess(0.05, 1.0)
  return float(
    dp_accounting.calibrate_dp_mechanism(
      lambda: make_accountant(kind), make_event, target_epsilon, delta, bracket, tol=1e-4
    )
  )


def plan_dp_sgd(n, target_epsilon, delta, batch, epochs, kind="rdp") -> dict:
  """q = batch / n, steps = ceil(epochs / q) and the smallest sigma meeting the target.

  Returns {batch, epochs, q, steps, sigma}; ValueError for impossible inputs.
  """
  if not 0 < batch <= n:
    raise ValueError(f"expected_batch={batch} must be in (0, num_examples={n}]")
  if epochs <= 0:
    raise ValueError(f"epochs={epochs} must be > 0")
  q = batch / n
  steps = math.ceil(epochs / q)
  sigma = noise_multiplier_for(target_epsilon, sampling_prob=q, steps=steps, delta=delta, kind=kind)
  return {"batch": batch, "epochs": epochs, "q": q, "steps": steps, "sigma": sigma}
