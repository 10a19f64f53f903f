"""FSCDP (Dopamine, K hospitals) and CDP with our process (K=1).

Every hospital runs one DP-SGD step per round on its Poisson sample, adds a
share sigma*C/sqrt(M) of the Gaussian noise, and the shares meet only in a
secure sum: the plain integer sum of dithered codes (TFF's secure intrinsics)
or a real SecAgg / SecAgg+ protocol (dopamine_tff/secagg/).
"""

from __future__ import annotations

import math
import os

from dopamine_tff import aborts
from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import dither
from dopamine_tff import handoff
from dopamine_tff import inprocess
from dopamine_tff import participation
from dopamine_tff import process
from dopamine_tff import quantization
from dopamine_tff import tf_rounds
from dopamine_tff.secagg import protocol as secagg_protocol
from dopamine_tff.secagg import rounds as secagg_rounds
from dopamine_tff.trainers import base

# (runtime, secure aggregation protocol?) -> round builder.
_BUILDERS = {
  ("tff", False): process.dp_sgd_round,
  ("in_process", False): inprocess.InProcessDpSgd,
  ("tff", True): process.build_masked_dp_sgd_process,
  ("in_process", True): inprocess.InProcessMaskedDpSgd,
}


def provisioned_shares(cfg: configs.TrainConfig, k: int) -> int:
  """M' = M - c (with provision_for_colluders): the shares each noise share is sized for.

  A share sigma*C/sqrt(M') makes a sum of M' shares carry noise sigma*C.
  """
  min_survivors = cfg.min_surviving_hospitals or k
  if min_survivors > k:
    raise ValueError(
      f"min_surviving_hospitals={min_survivors} exceeds the {k} hospitals of this setting"
    )
  provisioned = min_survivors - (cfg.assumed_colluders * cfg.provision_for_colluders)
  if provisioned < 1:
    raise ValueError(
      f"provision_for_colluders: {cfg.assumed_colluders} colluders leave no honest "
      f"hospital among the {min_survivors} provisioned"
    )
  return provisioned


def secure_sum_range(
  cfg: configs.TrainConfig, num_examples: int, dim: int, sum_noise_std: float, k: int
) -> tuple[quantization.QuantizationConfig, float]:
  """The secure sum's fixed-point range and its overflow probability per round."""
  stats = dict(
    l2_norm_clip=cfg.l2_norm_clip,
    num_examples=num_examples,
    sampling_prob=cfg.sampling_prob,
    noise_std=sum_noise_std,
    dim=dim,
  )
  bound = cfg.secure_sum_bound or quantization.default_bound(**stats, max_summands=k)
  secure_sum = quantization.QuantizationConfig(bound, max_summands=k)
  return secure_sum, quantization.overflow_probability(secure_sum, **stats)


def dp_sgd_params(
  cfg: configs.TrainConfig, noise_share: float, patient_unit: bool, frozen: tuple = ()
):
  """The round's DP-SGD parameters, by keyword from the config."""
  return process.DpSgdParams(
    sampling_prob=cfg.sampling_prob,
    l2_norm_clip=cfg.l2_norm_clip,
    noise_stddev=noise_share,
    learning_rate=cfg.learning_rate,
    momentum=cfg.momentum,
    patient_unit=patient_unit,
    lr_schedule=cfg.lr_schedule,
    total_rounds=cfg.rounds,
    augmentations=cfg.augmentations,
    noise_draws=cfg.noise_draws,
    frozen=frozen,
  )


class DpSgdTrainer(base.TffTrainer):
  """Dopamine's round; `federated` (FSCDP) or one pooled hospital (CDP-ours).

  Only federated hospitals drop out; CDP has one party that always delivers.
  """

  def __init__(
    self, cfg, sets, image_shape, num_classes, work_dir, *, federated: bool, ships_data=False
  ):
    # The worker reads only the Poisson sample's images (data/shards.py).
    super().__init__(cfg, sets, image_shape, num_classes, work_dir, ships_data, example_files=True)
    self.federated = federated
    k = len(self.sizes)
    self.provisioned = provisioned_shares(cfg, k)
    share = cfg.noise_multiplier * cfg.l2_norm_clip / math.sqrt(self.provisioned)
    # The sum's noise is largest when every hospital delivers.
    self.sum_noise_std = share * math.sqrt(k)
    self.secure_sum, self.overflow_per_round = secure_sum_range(
      cfg, sum(self.sizes), self.num_words, self.sum_noise_std, k
    )
    self.correction = dither.Correction(self.num_words)
    params = dp_sgd_params(cfg, share, self.patient_unit, self.frozen)
    params = params._replace(example_files=self.example_files)
    self.secagg = cfg.secagg_config(k)  # None: the plain secure sum
    secure = self.secagg is not None
    colluders = cfg.assumed_colluders
    dither_degree = dither.dither_degree(k, colluders) if k > 1 else 0
    if secure:  # the pair dithers use a sub-graph of the mask graph
      dither_degree = min(dither_degree, self.secagg.degree)
    extra = dict(degree=self.secagg.degree, prg=self.secagg.prg) if secure else {}
    # Where the worker reads this host's files, the dithers and masks reach it
    # as files too, not in the request (dopamine_tff/handoff.py).
    self.handoff = None
    if self.example_files:
      self.handoff = handoff.Handoff(os.path.join(work_dir, "handoff"))
      if secure:  # SecureDpSgd writes the files; the computations take paths
        extra["handoff_files"] = True
      else:
        extra["handoff"] = self.handoff
    built = _BUILDERS[cfg.runtime, secure](
      self.model_fn,
      self.initial_weights,
      image_shape,
      params,
      self.secure_sum,
      dither_degree=dither_degree,
      **extra,
    )
    if secure:
      built = secagg_rounds.SecureDpSgd(
        built,
        secagg_protocol.Protocol(self.secagg, self.randomness),
        self.correction,
        handoff=self.handoff,
      )
    self.round = built

  def _round_inputs(self, plan: base.RoundPlan, round_num: int) -> tf_rounds.RoundInputs:
    if self.secagg is not None:
      late = set(plan.unmask_dropped)
      return self.inputs(
        plan, round_num, responders=tuple(h for h in plan.clients if h not in late)
      )
    keys, signs, correction = dither.round_dithers(
      self.randomness,
      round_num,
      len(self.sizes),
      plan.clients,
      self.correction,
      self.cfg.assumed_colluders,
    )
    return self.inputs(plan, round_num, dither_keys=keys, dither_signs=signs, correction=correction)

  def run(self, state, plan: base.RoundPlan, round_num: int) -> base.RoundOutcome:
    try:
      new_state, measurements = self.round.run(state, self._round_inputs(plan, round_num))
    except aborts.RoundAborted as e:  # SecAgg aborts before anything is unmasked
      return _unreleased(state, e, isinstance(e, aborts.UpdateNotEncodable))
    if measurements.get("secure_clipped_count", 0):  # the plain sum flags after the fact
      return _unreleased(state, NOT_ENCODABLE, True)
    return base.RoundOutcome(tf_rounds.as_server_state(new_state), measurements)

  def plan(self, round_num: int) -> base.RoundPlan:
    """All hospitals minus this round's dropouts; the noise actually added.

    With K' survivors each adding sigma*C/sqrt(M), the sum carries noise
    sigma*C*sqrt(K'/M): that, not the nominal sigma, is the round's event.
    """
    k = len(self.sizes)
    dropped = participation.dropped(self.cfg, round_num, k) if self.federated else set()
    survivors = tuple(h for h in range(k) if h not in dropped)
    gone = tuple(sorted(dropped))
    # Without provisioning, any survivor count proceeds (with less noise).
    if len(survivors) < (self.cfg.min_surviving_hospitals or 1):
      why = (
        f"{len(survivors)} of {k} hospitals delivered, fewer than "
        f"--min_surviving_hospitals={self.cfg.min_surviving_hospitals}"
      )
      return base.RoundPlan(survivors, {}, skipped=True, dropped=gone, skip_reason=why)
    q, c = self.cfg.sampling_prob, self.cfg.assumed_colluders
    steps = {accounting.ALL: accounting.StepSpec(q, self._sigma(len(survivors)))}
    if c:  # the server knows c shares: only the others' noise protects
      steps[accounting.COLLUDERS] = accounting.StepSpec(q, self._sigma(max(len(survivors) - c, 0)))
    late = tuple(sorted(participation.unmask_dropped(self.cfg, round_num, survivors)))
    return base.RoundPlan(survivors, steps, dropped=gone, unmask_dropped=late)

  def _sigma(self, unknown_shares: int) -> float:
    """Noise multiplier of a sum holding `unknown_shares` shares unknown to the server."""
    return self.cfg.noise_multiplier * math.sqrt(unknown_shares / self.provisioned)

  def parties(self) -> list[str]:
    return (
      [accounting.ALL, accounting.COLLUDERS] if self.cfg.assumed_colluders else [accounting.ALL]
    )

  def describe(self) -> str:
    text = (
      super().describe()
      + "; "
      + self.secure_sum.describe()
      + f"; overflow probability per round <= {self.overflow_per_round:.2g}"
    )
    return text + (describe_secagg(self.secagg) if self.secagg is not None else "")


NOT_ENCODABLE = (
  "a hospital's update had a non-finite or out-of-range coordinate; the round is abandoned"
)


def _unreleased(state, why, not_encodable: bool) -> base.RoundOutcome:
  """A round that releases nothing: the state unchanged, nothing charged."""
  return base.RoundOutcome(
    state,
    {"secure_clipped_count": int(not_encodable)},
    released=False,
    reason=f"secure aggregation aborted: {why}",
  )


def describe_secagg(sa: secagg_protocol.SecAggConfig) -> str:
  """One log clause on the protocol's parameters and guarantee."""
  g = sa.guarantee.to_json()
  exposure = (
    ""
    if sa.complete
    else f", exposure probability <= 2^{g['security_failure_log2']} for "
    f"adversarial fraction {sa.adversarial_fraction}, dropout rate {sa.dropout_rate}"
  )
  return (
    f"; {sa.mode}: {sa.degree} neighbours per hospital"
    + (" (complete graph)" if sa.complete else " (Harary graph, new every round)")
    + f", Shamir threshold {sa.t} of {sa.holders_per_secret}, fresh keys every round, "
    f"{sa.server_model.replace('_', '-')} server, PRG {sa.prg}"
    + exposure
    + (f" ({sa.note})" if sa.note else "")
    + (" (INSECURE: Philox is not a cryptographic PRG)" if sa.prg != "chacha20" else "")
  )
