"""The paper's five settings as trainers behind one protocol (base.Trainer).

| setting | trainer | what it is |
|---|---|---|
| fscdp | fscdp.DpSgdTrainer(federated=True) | Dopamine: DP-SGD shares, secure sum |
| cdp (ours) | fscdp.DpSgdTrainer(federated=False) | the same round with K=1 |
| cdp (tf_privacy) | tf_privacy_cdp.TfPrivacyCdpTrainer | TF Privacy's Keras optimizer |
| f | fedavg.FedAvgTrainer(local_dp=False) | FedAvg |
| fpdp | fedavg.FedAvgTrainer(local_dp=True) | FedAvg of local DP-SGD |
| c | fedavg.FedAvgTrainer(centralised=True) | K=1, one epoch a round |
"""

from __future__ import annotations

from dopamine_tff import configs
from dopamine_tff.data import loaders
from dopamine_tff.trainers import base
from dopamine_tff.trainers import fedavg
from dopamine_tff.trainers import fscdp
from dopamine_tff.trainers import tf_privacy_cdp

# setting -> (trainer class, constructor flags, pools the hospitals into one)
_TRAINERS = {
  "fscdp": (fscdp.DpSgdTrainer, dict(federated=True), False),
  "cdp": (fscdp.DpSgdTrainer, dict(federated=False), True),
  "f": (fedavg.FedAvgTrainer, dict(local_dp=False, centralised=False), False),
  "fpdp": (fedavg.FedAvgTrainer, dict(local_dp=True, centralised=False), False),
  "c": (fedavg.FedAvgTrainer, dict(local_dp=False, centralised=True), True),
}


def make_trainer(
  cfg: configs.TrainConfig, data: loaders.FederatedData, work_dir: str, *, ships_data=False
) -> base.Trainer:
  """Builds the trainer of `cfg.setting` over `data` (shards go under `work_dir`).

  ``ships_data``: the TFF workers cannot read this host's files (a Runtime's
  `ships_data`), so the hospitals' data travel in each round's requests.
  """
  cls, flags, pooled = _TRAINERS[cfg.setting]
  sets = [data.pooled()] if pooled else list(data.hospitals)
  args = (cfg, sets, data.image_shape, data.num_classes, work_dir)
  if cfg.tf_privacy_baseline:
    return tf_privacy_cdp.TfPrivacyCdpTrainer(*args)
  return cls(*args, **flags, ships_data=ships_data)
