"""Every setting end to end through the binary, and impossible flags."""

import csv
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dopamine_tff import accounting
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--dataset=digits",
  "--num_examples=400",
  "--num_hospitals=4",
  "--rounds=3",
  "--batch_size=16",
  "--local_epochs=1",
  "--sampling_prob=0.1",
  "--noise_multiplier=1.0",
  "--l2_norm_clip=1.0",
  "--learning_rate=0.05",
  "--seed=3",
]


def _run(args, tmp_path=None, timeout=600):
  return helpers.run_binary("run_experiment", *args, output_dir=tmp_path, timeout=timeout)


def _read(tmp_path):
  with open(tmp_path / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  summary = json.loads((tmp_path / "summary.json").read_text())
  hparams = json.loads((tmp_path / "hparams.json").read_text())
  return rows, summary, hparams


def _independent_epsilon(summary):
  """Recomputes epsilon from the recorded events with a fresh accountant."""
  eps = []
  for ledger in summary["ledgers"].values():
    steps = [accounting.StepSpec(**s) for s in ledger["steps"]]
    eps.append(accounting.epsilon_of(steps, ledger["delta"]))
  return max(eps)


@pytest.mark.parametrize(
  "setting,extra",
  [
    ("c", []),
    ("cdp", []),
    ("cdp", ["--cdp_impl=tf_privacy"]),
    ("f", []),
    ("fpdp", []),
    ("fscdp", []),
  ],
)
def test_every_setting_runs_end_to_end(setting, extra, tmp_path):
  proc = _run([f"--setting={setting}", *TINY, *extra], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows, summary, hparams = _read(tmp_path)
  assert [int(r["round"]) for r in rows] == [1, 2, 3]
  assert hparams["setting"] == setting and hparams["num_hospitals"] == 4
  data = hparams["data"]  # the data configuration actually used
  assert (data["dataset"], data["image_size"], data["num_hospitals"]) == ("digits", 8, 4)
  assert (data["partition"], data["num_examples"], data["seed"]) == ("iid", 400, 3)
  assert summary["rounds_run"] == 3 and summary["stop_reason"] == "completed"
  assert 0.0 <= summary["final_test_accuracy"] <= 1.0
  assert os.path.isfile(tmp_path / "model.keras")
  assert "test accuracy" in proc.stdout
  if setting in ("c", "f"):
    assert summary["epsilon"] is None and rows[-1]["epsilon"] == "inf"
  else:
    assert summary["epsilon"] > 0
    assert summary["epsilon"] == pytest.approx(_independent_epsilon(summary), rel=1e-9)
    assert float(rows[-1]["epsilon"]) == pytest.approx(summary["epsilon"], rel=1e-5)
  if setting == "fscdp":
    n = summary["ledgers"]["all"]["steps"]
    assert len(n) == 3 and n[0] == {"sampling_prob": 0.1, "noise_multiplier": 1.0, "count": 1}
    assert summary["epsilon"] == pytest.approx(
      accounting.epsilon_of([accounting.StepSpec(0.1, 1.0, 3)], 1e-4), rel=1e-9
    )


@pytest.mark.e2e
def test_fscdp_and_cdp_have_equal_epsilon_for_equal_q_sigma_steps(tmp_path):
  eps = {}
  for setting in ("fscdp", "cdp"):
    out = tmp_path / setting
    proc = _run([f"--setting={setting}", *TINY], out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    eps[setting] = _read(out)[1]["epsilon"]
  assert eps["fscdp"] == eps["cdp"]


@pytest.mark.e2e
def test_target_epsilon_stops_and_keeps_previous_weights(tmp_path):
  eps3 = accounting.epsilon_of([accounting.StepSpec(0.1, 1.0, 3)], 1e-4)
  eps4 = accounting.epsilon_of([accounting.StepSpec(0.1, 1.0, 4)], 1e-4)
  target = (eps3 + eps4) / 2
  args = [a for a in TINY if not a.startswith("--rounds")]
  stopped, full = tmp_path / "stopped", tmp_path / "full3"
  seeded = "--insecure_seeded_noise"  # the two runs are compared bit for bit
  proc = _run(
    ["--setting=fscdp", *args, seeded, "--rounds=10", f"--target_epsilon={target}"], stopped
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows, summary, _ = _read(stopped)
  assert summary["rounds_run"] == 3 and summary["stop_reason"].startswith("budget")
  assert summary["epsilon"] <= target
  assert len(rows) == 3
  proc = _run(["--setting=fscdp", *args, seeded, "--rounds=3"], full)
  assert proc.returncode == 0
  a, b = np.load(stopped / "final_weights.npz"), np.load(full / "final_weights.npz")
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.e2e
@pytest.mark.parametrize("setting", ["fscdp", "fpdp"])
def test_budget_below_one_round_fails_and_names_the_first_rounds_cost(setting, tmp_path):
  out = tmp_path / "run"
  first = _run([f"--setting={setting}", *TINY, "--rounds=1"], tmp_path / "one")
  assert first.returncode == 0, first.stderr[-2000:]
  cost = _read(tmp_path / "one")[1]["epsilon"]
  proc = _run([f"--setting={setting}", *TINY, f"--target_epsilon={cost / 2}"], out)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert "admits no round" in line and f"costs epsilon {cost:.4g}" in line
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(out)  # nothing written, no untrained model as a result


@pytest.mark.e2e
@pytest.mark.parametrize(
  "flag,message",
  [
    ("--sampling_prob=1.5", "sampling_prob=1.5: q must be in (0, 1]"),
    ("--sampling_prob=0", "sampling_prob=0.0"),
    ("--noise_multiplier=-1", "noise_multiplier=-1.0: sigma must be >= 0"),
    ("--l2_norm_clip=0", "l2_norm_clip=0.0: C must be > 0"),
    ("--delta=1", "delta=1.0: must be in (0, 1)"),
    ("--delta=0.5", "delta=0.5 >= 1/N = 1/1438"),  # printed (0.000, 0.5)-DP before
    # Library errors before: dp_accounting's "Renyi divergence cannot be negative",
    # numpy's "zero-size array to reduction" and _ArrayMemoryError (149 GiB).
    ("--noise_multiplier=1e9", "noise_multiplier=1000000000.0: above 100000 the noise"),
    ("--test_fraction=0.001", "test_fraction=0.001 leaves no test example"),
    ("--image_size=100000", "--image_size=100000 on digits: 1797 images of 100000x100000x1"),
    ("--target_epsilon=-2", "target_epsilon=-2.0: must be > 0"),
    ("--num_hospitals=0", "num_hospitals must be >= 1"),
    ("--num_hospitals=5000", "larger than the data"),
    ("--dropout_schedule=3:0,19", "round 3 names hospital(s) [19], but there are only 10"),
  ],
)
def test_impossible_flags_fail_at_once_with_one_line(flag, message, tmp_path):
  proc = _run(["--setting=fscdp", "--dataset=digits", flag], tmp_path, timeout=120)
  assert proc.returncode == 2
  lines = [li for li in proc.stderr.splitlines() if li.startswith("run_experiment: error")]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "metrics.csv")


@pytest.mark.e2e
def test_flagfile_works(tmp_path):
  flagfile = tmp_path / "run.flags"
  flagfile.write_text("\n".join(["--setting=fscdp", *TINY, "--rounds=1"]) + "\n")
  proc = _run([f"--flagfile={flagfile}"], tmp_path / "out")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert _read(tmp_path / "out")[1]["rounds_run"] == 1
  assert math.isfinite(_read(tmp_path / "out")[1]["epsilon"])


@pytest.mark.e2e
def test_pld_accountant_budget_and_both_columns(tmp_path):
  steps3 = [accounting.StepSpec(0.1, 1.0, 3)]
  steps4 = [accounting.StepSpec(0.1, 1.0, 4)]
  pld3, pld4 = (accounting.epsilon_of(s, 1e-4, "pld") for s in (steps3, steps4))
  target = (pld3 + pld4) / 2
  args = [a for a in TINY if not a.startswith("--rounds")]
  proc = _run(
    ["--setting=fscdp", *args, "--rounds=10", "--accountant=pld", f"--target_epsilon={target}"],
    tmp_path / "pld",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows, summary, _ = _read(tmp_path / "pld")
  assert summary["rounds_run"] == 3 and summary["epsilon"] == pytest.approx(pld3, rel=1e-6)
  assert summary["epsilon_pld"] == summary["epsilon"] and "epsilon_rdp" not in summary
  # The same budget under RDP would have stopped earlier: PLD is tighter.
  assert accounting.epsilon_of(steps3, 1e-4) > target
  proc = _run(["--setting=fscdp", *TINY, "--accountant=both"], tmp_path / "both")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows, summary, _ = _read(tmp_path / "both")
  assert (
    float(rows[-1]["epsilon_pld"])
    < float(rows[-1]["epsilon_rdp"])
    == pytest.approx(summary["epsilon"], rel=1e-5)
  )


@pytest.mark.e2e
def test_help_has_no_cuda_noise_and_keeps_example_line_breaks():
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.run_experiment", "--help"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0  # issue 22 item 9: it was 1
  assert "Unable to register" not in proc.stdout + proc.stderr
  assert "--dataset=digits \\\n      --num_hospitals=10" in proc.stdout
  assert "--[no]overwrite" in proc.stdout and "--hospital_dirs" in proc.stdout


@pytest.mark.e2e
def test_import_filter_keeps_other_tensorflow_messages():
  """Only the three registration lines go: TF's other import-time logs stay."""
  code = "import dopamine_tff, tensorflow"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
  quiet = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  env["DOPAMINE_TFF_SHOW_CUDA_REGISTRATION"] = "1"
  loud = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert loud.stderr.count("Unable to register") == 3  # still printed by this TF build
  assert "Unable to register" not in quiet.stderr
  others = [li for li in loud.stderr.splitlines() if li and "Unable to register" not in li]
  assert others, "TF printed nothing else at level 0; the test cannot tell"
  kept = [li for li in quiet.stderr.splitlines() if li]
  assert len(kept) == len(others)


@pytest.mark.e2e
@pytest.mark.parametrize(
  "flags,message",
  [
    (
      ["--secure_aggregation=secagg", "--num_hospitals=4", "--secagg_threshold=99"],
      "secagg_threshold=99",
    ),
    (["--privacy_unit=patient"], "privacy_unit=patient needs patient ids"),
    (["--num_hospitals=4", "--min_surviving_hospitals=5"], "min_surviving_hospitals=5 exceeds"),
    (["--num_hospitals=4", "--dropout_schedule=2:1,7"], "round 2 names hospital(s) [7]"),
    # Issue 22 item 4: flags that were silently ignored or rounded.
    (
      ["--secure_aggregation=none", "--secagg_threshold=3"],
      "--secagg_threshold has no effect in this run",
    ),
    (
      ["--setting=cdp", "--secagg_unmask_dropout_prob=0.2"],  # cdp: no secure aggregation
      "--secagg_unmask_dropout_prob has no effect",
    ),
    (["--dataset=digits", "--data_dir=/tmp"], "--data_dir has no effect in this run"),
    (["--runtime=in_process", "--num_workers=2"], "--num_workers has no effect"),
    # Issue 23: workers on other hosts.
    (
      ["--worker_addresses=localhost:7001,10.0.0.5:8000"],
      "worker 10.0.0.5:8000 is not on this host: the hospitals' data would cross the network "
      "in the clear; give --worker_tls_ca (TLS) or --insecure_transport",
    ),
    (["--worker_addresses=localhost"], "worker address 'localhost' is not host:port"),
    (["--worker_tls_ca=/no/ca.pem", "--worker_addresses=w:1"], "ca_cert '/no/ca.pem' does not"),
    (["--worker_tls_cert=/x.pem"], "--worker_tls_cert and --worker_tls_key need --worker_tls_ca"),
    (["--worker_addresses=localhost:1", "--num_workers=2"], "cannot be combined"),
    (
      ["--worker_address=localhost:1", "--worker_addresses=localhost:2"],
      "--worker_address and --worker_addresses: give the list only",
    ),
    (["--runtime=in_process", "--worker_addresses=localhost:1"], "--worker_addresses has no"),
    (
      ["--secure_aggregation=secagg_plus", "--secagg_neighbours=12"],
      "secagg_neighbours=12: must be even, in [2, 8] (the ring gives k/2 neighbours per side); "
      "nearest valid: [8]",
    ),
    (["--resume", "--overwrite"], "--resume and --overwrite: pick one"),
    (
      ["--secure_aggregation=secagg", "--num_hospitals=1"],  # ran "threshold 1 of 1" before
      "secure aggregation needs K >= 2 hospitals, got 1",
    ),
    (["--resume"], "holds no checkpoint to continue"),
    (
      [
        "--secure_aggregation=secagg",
        "--num_hospitals=10",
        "--assumed_colluders=6",
        "--secagg_server_model=semi_honest",  # a malicious server's t is 9 with c=6
      ],
      "below the Shamir threshold t=6",
    ),
  ],
)
def test_configuration_errors_come_before_any_data_is_generated(flags, message, tmp_path):
  """Issue 20: these were refused only after the synthetic set was generated."""
  cache = tmp_path / "cache"
  cache.mkdir()
  env = dict(os.environ, DOPAMINE_TFF_CACHE=str(cache))
  cmd = [sys.executable, "-m", "experiments.run_experiment", "--setting=fscdp", *flags]
  proc = subprocess.run(
    [*cmd, f"--output_dir={tmp_path / 'out'}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [li for li in proc.stderr.splitlines() if li.startswith("run_experiment: error")]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert list(cache.iterdir()) == []  # the data source was never touched
  assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_the_final_line_counts_released_and_skipped_rounds(tmp_path):
  """Issue 22: aborted rounds were reported as rounds run, with no warning."""
  proc = _run(
    [
      "--setting=fscdp",
      *TINY,
      "--runtime=in_process",
      "--secure_aggregation=secagg",
      "--secagg_unmask_dropout_prob=0.999",
    ],
    tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  final = [li for li in proc.stdout.splitlines() if li.startswith("FSCDP on")][0]
  assert "after 3 rounds (0 released, 3 skipped: aborted or too few hospitals)" in final
  assert "WARNING: 3 of 3 rounds released nothing" in proc.stderr
  summary = _read(tmp_path)[1]
  assert (summary["rounds_released"], summary["rounds_skipped"]) == (0, 3)
  clean = _run(["--setting=fscdp", *TINY, "--runtime=in_process"], tmp_path / "clean")
  assert "after 3 rounds (" in clean.stdout and "skipped" not in clean.stdout
  assert _read(tmp_path / "clean")[1]["rounds_skipped"] == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
  "args,message",
  [
    (["--setting=zzz"], "run_experiment: error: flag --setting=zzz: value should be one of"),
    (["--no_such_flag=1"], "run_experiment: error: Unknown command line flag 'no_such_flag'"),
    (["stray"], "run_experiment: error: unexpected arguments ['stray']"),
  ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message):
  """Issue 22 item 9: absl's errors exited 1, a stray argument printed 164 lines of help."""
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.run_experiment", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  lines = [li for li in proc.stderr.splitlines() if not re.match(r"[IWEF]\d{4} ", li)]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
  assert proc.stdout == ""


@pytest.mark.e2e
@pytest.mark.parametrize(
  "setting,extra",
  [("c", []), ("cdp", ["--cdp_impl=tf_privacy"]), ("f", []), ("fpdp", []), ("fscdp", [])],
)
def test_frozen_layers_keep_their_starting_weights_bit_for_bit(setting, extra, tmp_path):
  """Issue 19's --trainable: only the named layer and those after it move, in every
  setting; the summary says how many parameters trained."""
  from dopamine_tff import models

  start = models.initial_weights("small_cnn", (8, 8, 1), 10, seed=11)
  init = tmp_path / "start.npz"
  np.savez(init, *start)
  out = tmp_path / "run"
  proc = _run(
    [f"--setting={setting}", *TINY, *extra, f"--init_weights={init}", "--trainable=from:dense"],
    out,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out / "final_weights.npz") as f:
    final = [f[f"arr_{i}"] for i in range(len(f.files))]
  names = [v.name for v in models.variables(models.build("small_cnn", (8, 8, 1), 10))]
  for name, a, b in zip(names, start, final, strict=True):
    frozen = name.split("/")[0] in ("conv0", "conv1", "conv2")
    assert np.array_equal(a, b) == frozen, name
  trainable = json.loads((out / "summary.json").read_text())["trainable"]
  assert trainable["first_layer"] == "dense" and trainable["spec"] == "from:dense"
  assert 0 < trainable["trainable_parameters"] < trainable["parameters"]
