"""SecAggConfig: one run's secure aggregation, checked against its threat model.

SecAgg uses the complete graph and a threshold t (default: a majority of K,
more against a malicious server with colluders). SecAgg+ derives its degree
k and t from K, an assumed adversarial fraction gamma and dropout rate delta
for 40 bits of security and 20 of correctness (secagg/parameters.py);
explicit values are checked against the same bounds. ``colluders`` (c
hospitals colluding with the server) must stay below t (and below gamma K
for SecAgg+): the run refuses any c its bounds do not cover. Against a
malicious server (the default) t exceeds half of a secret's holders plus its
corrupted ones, so no split of the server's requests collects both secrets
of a hospital.

Also here: the errors that abort a round. The graphs and the hiding check
are graphs.py.
"""

from __future__ import annotations

import dataclasses
import math

from dopamine_tff import aborts
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import parameters

MODES = ("none", "secagg", "secagg_plus")
SERVER_MODELS = ("malicious", "semi_honest")
SECURITY_BITS = parameters.SECURITY_BITS
CORRECTNESS_BITS = parameters.CORRECTNESS_BITS
_SMALL = parameters.SMALL


RoundAborted = aborts.RoundAborted
UpdateNotEncodable = aborts.UpdateNotEncodable


class ProtocolViolation(aborts.RoundAborted):
  """A request an honest holder refuses (e.g. both secrets of one hospital)."""


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
  """Secure aggregation of one run.

  Attributes:
    mode: 'secagg' (everyone masks with everyone) or 'secagg_plus' (k
      neighbours on a Harary graph resampled every round).
    num_hospitals: K.
    threshold: shares needed to reconstruct a secret (None: a majority of K
      for SecAgg; derived for SecAgg+). Must be >= 2.
    neighbours: k of SecAgg+ (None: derived). Even.
    prg: 'chacha20', or 'philox_insecure' (fast, not cryptographic).
    adversarial_fraction: gamma, the share of hospitals assumed corrupted
      (colluding with the server) that SecAgg+'s parameters must withstand.
    dropout_rate: delta, the share of hospitals assumed to drop in a round.
    colluders: c, the hospitals the run's colluder ledger assumes; refused
      when c >= t, or (SecAgg+) c > gamma K.
    server_model: 'malicious' (the server may lie about who dropped and ask
      different holders for different secrets: t exceeds half the holders
      plus the corrupted ones) or 'semi_honest' (it follows the protocol:
      smaller thresholds and SecAgg+ graphs).
  """

  mode: str
  num_hospitals: int
  threshold: int | None = None
  neighbours: int | None = None
  prg: str = "chacha20"
  adversarial_fraction: float = 0.05
  dropout_rate: float = 0.33
  colluders: int = 0
  server_model: str = "malicious"

  def __post_init__(self):
    self._check_assumptions()
    degree, derived_t = self._parameters()
    object.__setattr__(self, "_degree", degree)
    corrupted = parameters.adversarial_neighbours(self.num_hospitals, degree, self._gamma)
    object.__setattr__(self, "_corrupted", max(self.colluders, corrupted))
    t = self.threshold if self.threshold is not None else derived_t
    object.__setattr__(self, "_t", t)
    self._check_threshold(degree, t)
    self._check_colluders(t)
    self._check_server_model(t)
    self._check_guarantee()

  def _check_assumptions(self) -> None:
    """The mode, K, the PRG, the threat model's fractions and an explicit degree."""
    k = self.num_hospitals
    if self.mode not in MODES[1:]:
      raise ValueError(f"secure_aggregation={self.mode!r}: must be one of {MODES[1:]}")
    if self.server_model not in SERVER_MODELS:
      raise ValueError(f"secagg_server_model={self.server_model!r}: must be one of {SERVER_MODELS}")
    if k < 2:
      raise ValueError(
        f"secure aggregation needs K >= 2 hospitals, got {k}: one hospital's sum is its own "
        "update, with nothing to hide it among; use --secure_aggregation=none"
      )
    if self.prg not in masking.PRGS:
      raise ValueError(f"secagg_prg={self.prg!r}: must be one of {masking.PRGS}")
    if not 0.0 <= self.adversarial_fraction < 1.0:
      raise ValueError(
        f"secagg_adversarial_fraction={self.adversarial_fraction}: must be in [0, 1)"
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"secagg_dropout_rate={self.dropout_rate}: must be in [0, 1)")
    if self.adversarial_fraction + self.dropout_rate > 0.9:
      raise ValueError(
        f"secagg_adversarial_fraction + secagg_dropout_rate = "
        f"{self.adversarial_fraction + self.dropout_rate:.3g}: must be <= 0.9 for any "
        "SecAgg+ parameters to exist"
      )
    if self.neighbours is not None:
      if self.mode != "secagg_plus":
        raise ValueError("secagg_neighbours applies to secagg_plus only")
      top = (k - 1) - (k - 1) % 2  # the largest even degree K allows
      if self.neighbours < 2 or self.neighbours % 2 or self.neighbours > k - 1:
        if top < 2:
          raise ValueError(f"secagg_neighbours: secagg_plus needs K >= 3 hospitals, got {k}")
        lo = max(2, self.neighbours - self.neighbours % 2)
        near = sorted({min(lo, top), min(lo + 2, top)} if self.neighbours % 2 else {min(lo, top)})
        raise ValueError(
          f"secagg_neighbours={self.neighbours}: must be even, in [2, {top}] (the ring gives "
          f"k/2 neighbours per side); nearest valid: {near}"
        )

  def _check_threshold(self, degree: int, t: int) -> None:
    holders = degree + 1
    if self.threshold is not None and not 2 <= self.threshold <= holders:
      raise ValueError(
        f"secagg_threshold={self.threshold}: must be in [2, {holders}] (the holders of each "
        "secret); with t = 1 any single holder recovers a hospital's keys"
      )

  def _check_colluders(self, t: int) -> None:
    """c colluders must stay below t (and SecAgg+'s assumed corrupted count)."""
    k = self.num_hospitals
    if self.colluders >= t:
      raise ValueError(
        f"assumed_colluders={self.colluders}: must be below the Shamir threshold t={t}, "
        f"since {t} colluding holders reconstruct a victim's keys and unmask its update"
      )
    if self.mode == "secagg_plus" and self.colluders > math.floor(
      (self.adversarial_fraction + _SMALL) * k
    ):
      raise ValueError(
        f"assumed_colluders={self.colluders}: SecAgg+'s parameters assume at most "
        f"{math.floor((self.adversarial_fraction + _SMALL) * k)} corrupted hospitals "
        f"(secagg_adversarial_fraction={self.adversarial_fraction} of {k}); raise it"
      )

  def _check_server_model(self, t: int) -> None:
    """A malicious server must not collect both secrets of a hospital."""
    if not self.malicious:
      return
    need = parameters.malicious_threshold(self.holders_per_secret, self.corrupted_holders)
    if t < need:
      raise ValueError(
        f"secagg_threshold={t}: a malicious server that asks some of a hospital's "
        f"{self.holders_per_secret} holders for its self-mask share and others for its "
        f"private-key share collects both unless t > (holders + {self.corrupted_holders} "
        f"corrupted) / 2; need t >= {need} (or --secagg_server_model=semi_honest)"
      )

  def _check_guarantee(self) -> None:
    """SecAgg+ must meet its stated bounds: exposure 2^-40, aborts 2^-20."""
    g = self.guarantee
    if self.mode != "secagg_plus":
      return
    what = (
      f"secagg_plus with {self.degree} neighbours and threshold {self.t} at K={self.num_hospitals}"
    )
    assumed = (
      f"secagg_adversarial_fraction={self.adversarial_fraction}, "
      f"secagg_dropout_rate={self.dropout_rate}"
    )
    for bits, log2, event in (
      (SECURITY_BITS, g.security_log2, "an update is exposed"),
      (CORRECTNESS_BITS, g.correctness_log2, "a round aborts"),
    ):
      if log2 > -bits:
        raise ValueError(
          f"{what}: {event} with probability 2^{log2:.1f} > 2^-{bits} under {assumed}; leave "
          "--secagg_neighbours and --secagg_threshold unset to derive them"
        )

  def _threat_model(self) -> str:
    return _threat_model_text(self)

  @property
  def malicious(self) -> bool:
    return self.server_model == "malicious"

  def _derived_t(self, degree: int) -> int:
    k = self.num_hospitals
    t = parameters.threshold_for(
      degree,
      parameters.adversarial_neighbours(k, degree, self._gamma),
      self.colluders,
      self.malicious,
    )
    if degree >= k - 1:  # the complete graph: a majority at least, as SecAgg always had
      t = max(t, k // 2 + 1)
    return min(t, degree + 1)

  @property
  def _gamma(self) -> float:
    """The adversarial fraction the threat model names (none for SecAgg: c only)."""
    return self.adversarial_fraction if self.mode == "secagg_plus" else 0.0

  def _parameters(self) -> tuple[int, int]:
    k = self.num_hospitals
    if self.mode == "secagg":
      return k - 1, self._derived_t(k - 1)
    degree = self.neighbours
    if degree is None:
      found = parameters.harary_parameters(
        k,
        self.adversarial_fraction,
        self.dropout_rate,
        malicious=self.malicious,
        colluders=self.colluders,
      )
      if found is not None:
        return found
      degree = k - 1  # no Harary degree meets the bounds: the complete graph (see `note`)
    return degree, self.threshold if self.threshold is not None else self._derived_t(degree)

  @property
  def corrupted_holders(self) -> int:
    """Corrupted holders of one hospital's secrets the parameters withstand:
    c for SecAgg; for SecAgg+ also gamma K, or on a Harary graph t1, the bound
    on any hospital's corrupted neighbours (failing within the security bound)."""
    return self._corrupted

  @property
  def note(self) -> str | None:
    """Why SecAgg+ runs on the complete graph, when it does."""
    if self.mode == "secagg_plus" and self.complete:
      return (
        f"secagg_plus at K={self.num_hospitals}: no Harary degree below K - 1 meets 2^-"
        f"{SECURITY_BITS} security and 2^-{CORRECTNESS_BITS} correctness "
        f"({self.server_model.replace('_', '-')} server); every hospital masks with every other"
      )
    return None

  @property
  def degree(self) -> int:
    """Neighbours per hospital."""
    return self._degree

  @property
  def holders_per_secret(self) -> int:
    return self.degree + 1  # the neighbours and the hospital itself

  @property
  def t(self) -> int:
    return self._t

  @property
  def complete(self) -> bool:
    return self.degree >= self.num_hospitals - 1

  @property
  def guarantee(self) -> parameters.Guarantee:
    return parameters.guarantee(
      self.num_hospitals, self.degree, self.t, self.adversarial_fraction, self.dropout_rate
    )

  def to_json(self) -> dict:
    """Assumptions and failure probabilities (for summary.json)."""
    return {
      "mode": self.mode,
      "num_hospitals": self.num_hospitals,
      "neighbours": self.degree,
      "graph": "complete" if self.complete else "Harary, resampled every round",
      "threshold": self.t,
      "holders_per_secret": self.holders_per_secret,
      "assumed_adversarial_fraction": self.adversarial_fraction,
      "assumed_dropout_rate": self.dropout_rate,
      "assumed_colluders": self.colluders,
      "corrupted_holders_withstood": self.corrupted_holders,
      "server_model": self.server_model,
      "threat_model": self._threat_model(),
      **({"note": self.note} if self.note else {}),
      "prg": self.prg,
      **self.guarantee.to_json(),
    }


def _threat_model_text(cfg: SecAggConfig) -> str:
  server = (
    f"malicious server (it may lie about who dropped and split its requests across holders: "
    f"no hospital's two secrets are released, t = {cfg.t} > (holders {cfg.holders_per_secret} "
    f"+ corrupted {cfg.corrupted_holders}) / 2 and each holder refuses the second)"
    if cfg.malicious
    else "semi-honest server (it follows the protocol)"
  )
  if cfg.mode == "secagg":
    hidden = (
      f"updates hidden against it with up to {cfg.colluders} colluding hospitals (checked "
      f"every round); keys secret against any {cfg.t - 1}"
    )
  else:
    adversaries = math.floor((cfg.adversarial_fraction + _SMALL) * cfg.num_hospitals)
    hidden = (
      f"updates hidden against it with up to {adversaries} corrupted hospitals, at most "
      f"{cfg.corrupted_holders} among any hospital's holders (checked every round), but "
      f"with probability 2^{cfg.guarantee.security_log2:.1f}"
    )
  return f"{server}; {hidden}; keys, shares and graph fresh every round"
