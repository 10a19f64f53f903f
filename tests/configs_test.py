"""Configuration: every bad value refused with its name, before any data is read."""

import pytest

from dopamine_tff import configs
from dopamine_tff.data import loaders


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(setting="x"), "setting='x': must be one of"),
    (dict(model="resnet"), "model='resnet': must be one of"),
    (dict(rounds=0), "rounds=0: must be >= 1"),
    (dict(sampling_prob=1.5), "sampling_prob=1.5: q must be in"),
    (dict(noise_multiplier=float("nan")), "noise_multiplier=nan"),
    (dict(delta=1.0), "delta=1.0"),
    (dict(client_fraction=0.0), "client_fraction=0.0"),
    (dict(dropout_schedule=((0, (1,)),)), "dropout_schedule="),
    (dict(setting="f", secure_aggregation="secagg"), "applies to fscdp only"),
    (dict(secagg_threshold=1), "secagg_threshold=1: must be >= 2"),
    (dict(secagg_dropout_rate=1.0), "secagg_dropout_rate=1.0"),
    (dict(setting="cdp", cdp_impl="tf_privacy", augmentations=2), "augmentations=2"),
    (dict(setting="cdp", cdp_impl="tf_privacy", privacy_unit="patient"), "privacy_unit="),
  ],
)
def test_each_bad_value_is_named(kw, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
    configs.TrainConfig(**kw)


def test_what_k_refutes_is_refused_before_loading():
  data = loaders.DataConfig(dataset="digits", num_hospitals=4)
  bad = [
    (dict(min_surviving_hospitals=5), "min_surviving_hospitals=5 exceeds the 4"),
    (dict(dropout_schedule=((2, (1, 4)),)), r"round 2 names hospital\(s\) \[4\]"),
    (dict(secure_aggregation="secagg", secagg_threshold=99), "threshold"),
    (dict(privacy_unit="patient"), "--dataset=digits has none"),
  ]
  for kw, message in bad:
    with pytest.raises(ValueError, match=message):
      configs.check_compatible(configs.TrainConfig(setting="fscdp", **kw), data)
  # CDP pools the hospitals: M counts one party.
  with pytest.raises(ValueError, match="exceeds the 1 hospitals"):
    configs.check_compatible(configs.TrainConfig(setting="cdp", min_surviving_hospitals=2), data)
  configs.check_compatible(configs.TrainConfig(setting="fscdp", min_surviving_hospitals=4), data)


def test_epochs_and_rounds_are_one_definition():
  cfg = configs.TrainConfig(setting="fscdp", sampling_prob=0.05)
  assert cfg.epochs_after(40) == pytest.approx(2.0)
  assert cfg.rounds_for(2.0) == 40
  tfp = configs.TrainConfig(setting="cdp", cdp_impl="tf_privacy")
  assert tfp.epochs_after(3) == 3.0
  fed = configs.TrainConfig(setting="fpdp", local_epochs=5, client_fraction=0.5, batch_size=50)
  assert fed.epochs_after(2) == 5.0
  assert fed.fpdp_steps(120) == (50 / 120, 5 * 3)


def test_loop_options_refuse_a_negative_cadence():
  with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
    configs.LoopOptions(checkpoint_every=-1)
