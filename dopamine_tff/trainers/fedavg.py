"""F (FedAvg), FPDP (local DP-SGD with the full noise) and C (K=1, E=1, all data).

FedAvg rounds: selected hospitals train E local epochs and the server takes
the example-weighted mean of their deltas (a plain sum: in F nothing is
private; in FPDP each hospital's update is DP by itself, so each hospital is
its own privacy party with its own ledger).
"""

from __future__ import annotations

from dopamine_tff import accounting
from dopamine_tff import inprocess
from dopamine_tff import participation
from dopamine_tff import process
from dopamine_tff.trainers import base

_BUILDERS = {"tff": process.fedavg_round, "in_process": inprocess.InProcessFedAvg}


class FedAvgTrainer(base.TffTrainer):
  """FedAvg; `local_dp` runs each local step as DP-SGD (FPDP); `centralised` is C.

  C is one pooled party taking one epoch a round and never dropping out.
  """

  def __init__(
    self,
    cfg,
    sets,
    image_shape,
    num_classes,
    work_dir,
    *,
    local_dp: bool,
    centralised: bool,
    ships_data=False,
  ):
    super().__init__(cfg, sets, image_shape, num_classes, work_dir, ships_data)
    self.local_dp, self.centralised = local_dp, centralised
    self.local = process.LocalParams(
      local_epochs=1 if centralised else cfg.local_epochs,
      batch_size=cfg.batch_size,
      learning_rate=cfg.learning_rate,
      momentum=cfg.momentum,
      dp_noise_multiplier=cfg.noise_multiplier if local_dp else None,
      l2_norm_clip=cfg.l2_norm_clip,
      patient_unit=self.patient_unit,
      lr_schedule=cfg.lr_schedule,
      total_rounds=cfg.rounds,
      augmentations=cfg.augmentations,
      noise_draws=cfg.noise_draws,
      frozen=self.frozen,
    )
    self.round = _BUILDERS[cfg.runtime](
      self.model_fn, self.initial_weights, image_shape, self.local
    )

  def run(self, state, plan: base.RoundPlan, round_num: int) -> base.RoundOutcome:
    state, measurements = self.round.run(state, self.inputs(plan, round_num))
    return base.RoundOutcome(state, measurements)

  def plan(self, round_num: int) -> base.RoundPlan:
    k = len(self.sizes)
    chosen = participation.selected(self.cfg, round_num, k)
    dropped = set() if self.centralised else participation.dropped(self.cfg, round_num, k)
    clients = tuple(c for c in chosen if c not in dropped)
    if not clients:
      why = f"none of the {len(chosen)} selected hospitals delivered"
      return base.RoundPlan((), {}, skipped=True, dropped=tuple(sorted(dropped)), skip_reason=why)
    steps = {}
    if self.local_dp:
      for c in clients:
        # Units: examples, or patients for the patient unit.
        q, count = self.cfg.fpdp_steps(self.units[c])
        steps[str(c)] = accounting.StepSpec(q, self.cfg.noise_multiplier, count)
    return base.RoundPlan(clients, steps, dropped=tuple(sorted(dropped)))

  def parties(self) -> list[str]:
    return [str(k) for k in range(len(self.sizes))] if self.local_dp else []
