"""The smoke preset end to end: every setting, the table and the three figures."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dopamine_tff import presets
from dopamine_tff import results_tables

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("smoke")
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.reproduce_paper", "--preset=smoke", f"--output_dir={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_smoke_preset_writes_table_and_figures(smoke_dir):
  out, proc = smoke_dir
  for name in (
    "results.csv",
    "results.md",
    "accuracy_vs_epochs.png",
    "epsilon_vs_epochs.png",
    "accuracy_vs_epsilon.png",
  ):
    assert os.path.getsize(out / name) > 0, name
  with open(out / "results.csv") as f:
    rows = {r["setting"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"c", "cdp", "f", "fpdp", "fscdp"}
  assert all(int(rows[s]["runs"]) == 2 for s in rows)
  assert rows["c"]["epsilon_mean"] == "nan" and float(rows["fscdp"]["epsilon_mean"]) > 0
  # Same q, sigma and steps: Dopamine's epsilon is central DP-SGD's.
  assert float(rows["fscdp"]["epsilon_mean"]) == pytest.approx(float(rows["cdp"]["epsilon_mean"]))
  assert "FSCDP (Dopamine)" in proc.stdout


def test_second_start_skips_finished_runs(smoke_dir):
  out, _ = smoke_dir
  before = os.path.getmtime(out / "fscdp" / "seed_0" / "summary.json")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.reproduce_paper",
      "--preset=smoke",
      f"--output_dir={out}",
      "--settings=fscdp",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"2/2 runs reused from {out}" in proc.stdout
  assert os.path.getmtime(out / "fscdp" / "seed_0" / "summary.json") == before


def _reproduce(args, cwd=ROOT, timeout=900):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(
    [sys.executable, "-m", "experiments.reproduce_paper", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_default_output_data_overrides_reuse_and_force(tmp_path):
  """A fresh start trains (default output outside results/), and reuse is checked."""
  args = ["--preset=smoke", "--dataset=digits", "--settings=c", "--seeds=1"]
  proc = _reproduce(args, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = tmp_path / "runs" / "reproduce" / "smoke" / "c" / "seed_0"
  hparams = json.loads((run / "hparams.json").read_text())
  assert hparams["data"]["dataset"] == "digits" and hparams["data"]["image_size"] == 16
  assert hparams["data"]["num_hospitals"] == 4 and hparams["data"]["partition"] == "iid"
  assert json.loads((run / "summary.json").read_text())["dataset"] == "digits"
  assert "1 runs trained, 0 reused" in proc.stdout
  # Other data into the same directory: refused, naming what differs.
  other = _reproduce([*args, "--image_size=12"], cwd=tmp_path)
  assert other.returncode == 2
  line = other.stderr.strip().splitlines()[-1]
  assert "finished run of other settings (data differ)" in line and "--force" in line
  before = (run / "summary.json").stat().st_mtime_ns
  forced = _reproduce([*args, "--image_size=12", "--force"], cwd=tmp_path)
  assert forced.returncode == 0, forced.stderr[-3000:]
  assert (run / "summary.json").stat().st_mtime_ns != before
  assert json.loads((run / "hparams.json").read_text())["data"]["image_size"] == 12


def test_data_dir_is_honoured_or_refused(tmp_path):
  from tests import aptos_files

  refused = _reproduce(["--preset=smoke", f"--data_dir={tmp_path}", f"--output_dir={tmp_path}"])
  assert refused.returncode == 2
  assert "trains on synthetic; add --dataset=aptos" in refused.stderr
  aptos = aptos_files.write_aptos(
    str(tmp_path / "aptos"), [(f"img{i:03d}", i % 5) for i in range(40)]
  )
  out = tmp_path / "out"
  proc = _reproduce(
    [
      "--preset=smoke",
      "--dataset=aptos",
      f"--data_dir={aptos}",
      "--image_size=16",
      "--settings=fscdp",
      "--seeds=1",
      f"--output_dir={out}",
    ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  hparams = json.loads((out / "fscdp" / "seed_0" / "hparams.json").read_text())
  assert hparams["data"]["dataset"] == "aptos" and hparams["data"]["data_dir"] == aptos
  assert hparams["data"]["num_examples"] == 0  # the preset's synthetic count does not cap APTOS
  summary = json.loads((out / "fscdp" / "seed_0" / "summary.json").read_text())
  assert summary["dataset"] == "aptos"


def test_plot_binary_redraws(smoke_dir, tmp_path):
  out, _ = smoke_dir
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.plot_results",
      f"--runs_dir={out}",
      f"--out_dir={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 0
  assert "| FSCDP (Dopamine) | 2 |" in (tmp_path / "results.md").read_text()
  runs = results_tables.collect(str(out))
  assert results_tables.default_title(runs) == "smoke preset, synthetic"  # not "dopamine_tff"


def test_plot_binary_on_empty_dir_fails_clearly(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.plot_results", f"--runs_dir={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and "no finished runs" in proc.stderr


def test_paper_preset_needs_data_dir(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.reproduce_paper",
      "--preset=paper",
      f"--output_dir={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and "needs --data_dir" in proc.stderr


def test_presets_follow_the_paper():
  paper = presets.get("paper")
  fscdp = paper.settings["fscdp"]
  assert (fscdp.sampling_prob, fscdp.noise_multiplier, fscdp.l2_norm_clip) == (0.03425, 1.15, 2.0)
  assert fscdp.rounds * fscdp.sampling_prob == pytest.approx(100, rel=0.01)
  assert (
    paper.settings["fpdp"].noise_multiplier == 2.0 and paper.settings["f"].client_fraction == 0.5
  )
  assert paper.data.num_hospitals == 10 and paper.data.image_size == 224 and paper.seeds == 5
  with pytest.raises(ValueError, match="unknown preset"):
    presets.get("huge")


def test_table_mean_and_std(tmp_path):
  runs = {
    "fscdp": [
      {
        "summary": {
          "final_test_accuracy": a,
          "epsilon": 2.0,
          "delta": 1e-4,
          "epochs": 1.0,
          "rounds_run": 3,
          "wall_time_s": 1.0,
        },
        "metrics": {},
      }
      for a in (0.5, 0.7)
    ]
  }
  (row,) = results_tables.table_rows(runs)
  assert row["accuracy_mean"] == pytest.approx(0.6) and row["accuracy_std"] == pytest.approx(
    0.1414, abs=1e-3
  )


@pytest.mark.slow
def test_cpu_preset_reproduces_the_papers_ordering(tmp_path):
  """One seed of the cpu preset (about 8 minutes): Figure 1's ordering holds."""
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.reproduce_paper",
      "--preset=cpu",
      "--seeds=1",
      f"--output_dir={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=3600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["setting"]: r for r in csv.DictReader(f)}
  acc = {s: float(r["accuracy_mean"]) for s, r in rows.items()}
  eps = {s: float(r["epsilon_mean"]) for s, r in rows.items() if r["epsilon_mean"] != "nan"}
  assert min(acc["c"], acc["f"]) > max(acc["cdp"], acc["fscdp"], acc["fpdp"])
  # Every private setting is held to the same budget; Dopamine learns, FPDP less.
  assert all(e <= 10.4 for e in eps.values())
  assert acc["fscdp"] > acc["fpdp"]
  assert eps["fscdp"] == pytest.approx(eps["cdp"])


def test_a_pretrained_preset_pretrains_once_and_every_run_starts_there(tmp_path):
  """Issue 19: the public weights are made once (cached) and named in every run."""
  out = tmp_path / "pre"
  args = ["--preset=smoke_pretrained", "--settings=c,fscdp", "--seeds=1", f"--output_dir={out}"]
  proc = _reproduce(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (public,) = sorted((out / "public").glob("public_*.npz"))
  sha = json.loads(public.with_suffix(".npz.json").read_text())["sha256"]
  for setting in ("c", "fscdp"):
    summary = json.loads((out / setting / "seed_0" / "summary.json").read_text())
    assert summary["init_weights"]["sha256"] == sha
    assert summary["initial_test_accuracy"] is not None
  table = (out / "results.md").read_text()
  assert "starts from pretrained weights" in table
  assert "| public |" not in table  # the pretraining run is not one of the compared runs
  again = _reproduce([*args, "--force"])
  assert again.returncode == 0, again.stderr[-3000:]
  assert "public weights reused" in again.stderr


def test_no_interval_below_three_runs_and_intervals_stay_in_0_100():
  """Issue 22 item 8: 2 seeds printed C [-152.24, 211.14] %."""
  assert math.isnan(results_tables.ci95_halfwidth(0.5, 2))
  rows = [
    dict(setting="c", runs=2, accuracy_mean=0.3, accuracy_std=0.4, accuracy_ci95=math.nan,
         majority_class=0.5, epsilon_mean=math.nan, epsilon_std=math.nan, delta=None, epochs=1.0,
         rounds=1, wall_time_s=1.0, audit_auc=math.nan, audit_epsilon_lb=math.nan),
    dict(setting="f", runs=5, accuracy_mean=0.95, accuracy_std=0.1,
         accuracy_ci95=results_tables.ci95_halfwidth(0.1, 5), majority_class=0.5,
         epsilon_mean=math.nan, epsilon_std=math.nan, delta=None, epochs=1.0, rounds=1,
         wall_time_s=1.0, audit_auc=math.nan, audit_epsilon_lb=math.nan),
  ]  # fmt: skip
  table = results_tables.markdown(rows)
  assert "| 30.00 ± 40.00 % | - |" in table
  assert "| [82.58, 100.00] % |" in table  # 95 +- 12.4 %, clamped at 100


def test_paper_pretrained_needs_the_imagenet_weights_file(tmp_path):
  """Issue 19: the paper's pretrained preset cannot make its weights here; it says so."""
  proc = _reproduce(
    ["--preset=paper_pretrained", "--data_dir=/nowhere", f"--output_dir={tmp_path}"]
  )
  assert proc.returncode == 2
  (line,) = (x for x in proc.stderr.splitlines() if x.startswith("reproduce_paper:"))
  assert "--init_weights" in line and "convert_squeezenet" in line


def test_every_setting_starts_from_given_weights_and_trains_what_is_asked(tmp_path):
  """--init_weights and --trainable reach every setting of a preset."""
  from dopamine_tff import models
  from dopamine_tff import presets

  preset = presets.get("smoke")
  size = preset.data.resolved_image_size
  start = models.initial_weights("small_cnn", (size, size, 3), 5, seed=7)
  init = tmp_path / "start.npz"
  np.savez(init, *start)
  out = tmp_path / "runs"
  args = [
    "--preset=smoke",
    "--settings=c,fscdp",
    "--seeds=1",
    f"--init_weights={init}",
    "--trainable=head",
    f"--output_dir={out}",
  ]
  proc = _reproduce(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for setting in ("c", "fscdp"):
    summary = json.loads((out / setting / "seed_0" / "summary.json").read_text())
    assert summary["init_weights"]["path"] == str(init)
    assert summary["trainable"]["spec"] == "head"
    with np.load(out / setting / "seed_0" / "final_weights.npz") as f:
      final = [f[f"arr_{i}"] for i in range(len(f.files))]
    assert all(np.array_equal(a, b) for a, b in zip(start[:-2], final[:-2]))  # frozen
  assert not (out / "public").exists()  # nothing pretrained: the file was given
