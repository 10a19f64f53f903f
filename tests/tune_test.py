"""The tuning driver: equal budgets, seeded draws, sigma at the target, resumable."""

import json
import os
import subprocess
import sys

import pytest

from dopamine_tff import accounting
from dopamine_tff import participation
from dopamine_tff import presets
from dopamine_tff import trainers
from dopamine_tff import tuning
from dopamine_tff.data import loaders

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_setting_gets_the_same_number_of_seeded_trials():
  for setting in tuning.SEARCH_SPACE:
    a = tuning.draw_trials(setting, 4, 0)
    assert len(a) == 4 and a == tuning.draw_trials(setting, 4, 0)
    assert len({json.dumps(t, sort_keys=True) for t in a}) == 4  # distinct
    assert all(t[k] in tuning.SEARCH_SPACE[setting][k] for t in a for k in t)
  assert tuning.draw_trials("fscdp", 4, 0) == tuning.draw_trials("cdp", 4, 0)
  assert tuning.draw_trials("c", 4, 0) != tuning.draw_trials("c", 4, 1)


@pytest.mark.parametrize("setting", ["cdp", "fscdp", "fpdp"])
def test_private_trials_are_calibrated_to_the_target_at_the_same_epochs(setting):
  preset = presets.get("cpu")
  data = loaders.load(
    loaders.DataConfig(
      dataset="synthetic",
      num_examples=3000,
      image_size=16,
      num_hospitals=10,
      validation_fraction=0.2,
    )
  )
  base = preset.settings[setting]
  for params in tuning.draw_trials(setting, 3, 0):
    cfg = tuning.trial_config(base, params, data, 10.4)
    assert tuning.base_epochs(cfg) == pytest.approx(tuning.base_epochs(base), rel=0.01)
    assert cfg.target_epsilon == 10.4
    if setting != "fpdp":
      spec = accounting.StepSpec(cfg.sampling_prob, cfg.noise_multiplier, cfg.rounds)
      assert accounting.epsilon_of([spec], cfg.delta) == pytest.approx(10.4, abs=0.01)


def test_binary_tunes_the_smoke_preset_and_resumes(tmp_path):
  args = [
    sys.executable,
    "-m",
    "experiments.tune",
    "--preset=smoke",
    "--settings=c,fscdp",
    "--trials=2",
    f"--output_dir={tmp_path}",
  ]
  first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  chosen = json.loads((tmp_path / "chosen.json").read_text())
  assert set(chosen["chosen"]) == {"c", "fscdp"} and chosen["trials_per_setting"] == 2
  table = (tmp_path / "search.md").read_text()
  assert table.count("**best**") == 2 and table.count("| FSCDP |") == 2
  assert chosen["select_by"] == "accuracy" and "validation_kappa" in chosen["chosen"]["fscdp"]
  hparams = json.loads((tmp_path / "fscdp" / "trial_0" / "hparams.json").read_text())
  assert hparams["data"]["validation_fraction"] == 0.2  # scored on validation, not test
  summary = json.loads((tmp_path / "fscdp" / "trial_0" / "summary.json").read_text())
  assert summary["dataset"] == "synthetic (validation split)"
  before = (tmp_path / "fscdp" / "trial_0" / "summary.json").stat().st_mtime_ns
  again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (tmp_path / "fscdp" / "trial_0" / "summary.json").stat().st_mtime_ns == before
  assert (tmp_path / "search.md").read_text() == table
  ablate = subprocess.run(
    [*args, "--ablate=fscdp"], cwd=ROOT, capture_output=True, text=True, timeout=900
  )
  assert ablate.returncode == 0, ablate.stderr[-3000:]
  lines = (tmp_path / "ablation_fscdp.md").read_text().splitlines()
  assert lines[2].startswith("| chosen |") and len(lines) == 2 + 5


def test_ablation_toggles_one_technique_at_a_time():
  chosen = {
    "ema_decay": 0.95,
    "l2_norm_clip": 1.0,
    "learning_rate": 0.1,
    "lr_schedule": "cosine",
    "sampling_prob": 0.1,
    "validation_accuracy": 0.7,
  }
  variants = dict(tuning.ablation_variants("fscdp", chosen))
  base = variants["chosen"]
  assert "validation_accuracy" not in base
  for name, params in variants.items():
    changed = {k for k in set(base) | set(params) if base.get(k) != params.get(k)}
    assert len(changed) == (0 if name == "chosen" else 1), name
  assert variants["ema_decay=0.0"]["ema_decay"] == 0.0
  assert variants["augmentations=2"]["augmentations"] == 2


def test_one_definition_of_epochs_selection_and_fpdp_steps():
  """Issue 20: tuning and the trainers each had their own copies; now one each."""
  import tempfile

  from dopamine_tff import configs

  data = loaders.load(loaders.DataConfig(dataset="digits", num_hospitals=4, num_examples=400))
  tfp = configs.TrainConfig(setting="cdp", cdp_impl="tf_privacy", rounds=3)
  assert tuning.base_epochs(tfp) == 3.0  # was rounds * q = 0.103 for the baseline
  fpdp = configs.TrainConfig(setting="fpdp", rounds=5, client_fraction=0.5, batch_size=16)
  trainer = trainers.make_trainer(fpdp, data, tempfile.mkdtemp())
  for r in range(5):
    plan = trainer.plan(r)
    assert list(plan.clients) == participation.selected(fpdp, r, 4)
    for c in plan.clients:
      q, count = fpdp.fpdp_steps(len(data.hospitals[c]))
      assert (plan.steps[str(c)].sampling_prob, plan.steps[str(c)].count) == (q, count)
  assert trainer.epochs(5) == tuning.base_epochs(fpdp) == fpdp.epochs_after(5)
  assert fpdp.rounds_for(fpdp.epochs_after(5)) == 5


def test_a_pretrained_start_draws_from_the_fine_tuning_grid():
  for setting in tuning.SEARCH_SPACE:
    fine = tuning.draw_trials(setting, 4, 0, pretrained=True)
    space = tuning.PRETRAINED_SEARCH_SPACE[setting]
    assert set(space) == set(tuning.SEARCH_SPACE[setting])  # only the values differ
    assert all(t[k] in space[k] for t in fine for k in t)
  fine, scratch = (
    g["fpdp"]["learning_rate"] for g in (tuning.PRETRAINED_SEARCH_SPACE, tuning.SEARCH_SPACE)
  )
  assert max(fine) <= min(scratch)


def test_binary_tunes_a_pretrained_preset_from_its_public_weights(tmp_path):
  """Issue 19: tune.py ignored a *_pretrained preset's public start."""
  args = [
    sys.executable,
    "-m",
    "experiments.tune",
    "--preset=smoke_pretrained",
    "--settings=fpdp",
    "--trials=2",
    f"--output_dir={tmp_path}",
  ]
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  chosen = json.loads((tmp_path / "chosen.json").read_text())
  assert chosen["grid"] == "pretrained" and chosen["start"].startswith(str(tmp_path / "public"))
  assert len(chosen["start_sha256"]) == 64
  for i in range(2):
    hparams = json.loads((tmp_path / "fpdp" / f"trial_{i}" / "hparams.json").read_text())
    assert hparams["init_weights"] == chosen["start"]
    assert hparams["learning_rate"] in tuning.PRETRAINED_SEARCH_SPACE["fpdp"]["learning_rate"]
    summary = json.loads((tmp_path / "fpdp" / f"trial_{i}" / "summary.json").read_text())
    assert summary["init_weights"]["sha256"] == chosen["start_sha256"]


def test_a_search_can_choose_by_kappa_or_referable_auc():
  rows = [
    dict(trial=0, param_learning_rate=0.1, noise_multiplier=1.0, validation_accuracy=0.80,
         validation_kappa=0.50, validation_referable_auc=0.91),
    dict(trial=1, param_learning_rate=0.05, noise_multiplier=1.1, validation_accuracy=0.78,
         validation_kappa=0.62, validation_referable_auc=0.89),
  ]  # fmt: skip
  assert tuning.choose(rows)["trial"] == 0
  by_kappa = tuning.choose(rows, "kappa")
  assert by_kappa["trial"] == 1 and by_kappa["learning_rate"] == 0.05
  assert by_kappa["selected_by"] == "validation kappa" and by_kappa["validation_kappa"] == 0.62
  assert tuning.choose(rows, "referable_auc")["trial"] == 0
  digits = [dict(r, validation_kappa=None, validation_referable_auc=None) for r in rows]
  with pytest.raises(ValueError, match="--select_by=kappa: no trial measured it"):
    tuning.choose(digits, "kappa")
