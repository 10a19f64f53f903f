"""Presets: every preset builds; cpu_pretrained is the search's winners, recalibrated."""

import dataclasses
import json
import os

import pytest

from dopamine_tff import presets
from dopamine_tff import tuning
from dopamine_tff.data import loaders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", presets.PRESETS)
def test_every_preset_builds_all_five_settings(name):
  preset = presets.get(name)
  assert set(preset.settings) == {"c", "cdp", "f", "fpdp", "fscdp"}
  assert preset.name == name


def test_cpu_pretrained_is_the_pretrained_search_s_winners_at_full_data():
  """The preset copies results/tune_cpu_pretrained/chosen.json; sigma and rounds
  are what tuning.trial_config gives on the full training data."""
  with open(os.path.join(ROOT, "results", "tune_cpu_pretrained", "chosen.json")) as f:
    chosen = json.load(f)
  assert chosen["grid"] == "pretrained" and chosen["target_epsilon"] == 10.4
  preset, cpu = presets.get("cpu_pretrained"), presets.get("cpu")
  assert preset.pretrain is not None
  data = loaders.load(preset.data)
  for setting, winner in chosen["chosen"].items():
    params = {k: v for k, v in winner.items() if k in tuning.PRETRAINED_SEARCH_SPACE[setting]}
    want = tuning.trial_config(cpu.settings[setting], params, data, 10.4)
    got = preset.settings[setting]
    for field in dataclasses.fields(got):
      a, b = getattr(got, field.name), getattr(want, field.name)
      if field.name == "noise_multiplier":
        assert a == pytest.approx(b, abs=5e-4), setting  # the preset rounds sigma
      else:
        assert a == b, (setting, field.name)
