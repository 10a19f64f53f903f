"""Runs the paper's five settings over several seeds and draws Figure 1.

  python -m experiments.reproduce_paper --preset=cpu --output_dir=results/cpu
  python -m experiments.reproduce_paper --preset=paper --data_dir=/data/aptos2019 \
      --runtime=in_process --output_dir=results/paper        # on a GPU host

Each run goes to <output_dir>/<setting>/seed_<n>/ (the files of
run_experiment). A finished run is skipped when the driver is started again;
an unfinished one resumes from its checkpoint. At the end: results.csv,
results.md (mean and std over seeds) and accuracy_vs_epochs.png,
epsilon_vs_epochs.png, accuracy_vs_epsilon.png.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app
from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import devices
from dopamine_tff import plotting
from dopamine_tff import presets
from dopamine_tff import runtime
from dopamine_tff import training_loop
from dopamine_tff.data import loaders

_PRESET = flags.DEFINE_enum("preset", "smoke", list(presets.PRESETS), "Which preset.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per setting (default: the preset's).")
_SETTINGS = flags.DEFINE_list("settings", ["c", "cdp", "f", "fpdp", "fscdp"], "Settings to run.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "APTOS folder for --preset=paper.")
_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", "results/reproduction", "Where runs and figures go."
)
_RUNTIME = flags.DEFINE_enum("runtime", "tff", ["tff", "in_process"], "Runtime of the rounds.")
_GPUS = flags.DEFINE_string("gpus", None, "in_process: GPU indices ('0,1'), 'none', or all.")
_AUDIT = flags.DEFINE_bool("audit", False, "Membership-inference audit of every final model.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint every N rounds.")


def _run_one(cfg, data, run_dir) -> None:
  if os.path.isfile(os.path.join(run_dir, "summary.json")):
    logging.info("already done: %s", run_dir)
    return
  options = training_loop.LoopOptions(
    checkpoint_every=_CHECKPOINT_EVERY.value, resume=True, audit=_AUDIT.value
  )
  hparams = dict(dataclasses.asdict(cfg), preset=_PRESET.value)
  summary = training_loop.run(
    cfg, data, run_dir, hparams=hparams, options=options, log=logging.info
  )
  logging.info(
    "%s: accuracy %.4f epsilon %s", run_dir, summary["final_test_accuracy"], summary["epsilon"]
  )


def main(argv):
  del argv
  try:
    preset = presets.get(_PRESET.value)
    unknown = set(_SETTINGS.value) - set(preset.settings)
    if unknown:
      raise ValueError(f"unknown settings {sorted(unknown)}")
    data_cfg = preset.data
    if _DATA_DIR.value:
      data_cfg = dataclasses.replace(data_cfg, data_dir=_DATA_DIR.value)
    elif data_cfg.dataset in ("aptos", "eyepacs"):
      raise ValueError(f"--preset={preset.name} needs --data_dir (the APTOS 2019 folder)")
    devices.configure(devices.parse_gpus(_GPUS.value))
  except ValueError as e:
    print(f"reproduce_paper: error: {e}", file=sys.stderr)
    sys.exit(2)
  seeds = _SEEDS.value or preset.seeds
  root = _OUTPUT_DIR.value
  if _RUNTIME.value == "tff":
    runtime.start()
  try:
    for seed in range(seeds):
      data = loaders.load(dataclasses.replace(data_cfg, seed=seed))
      for setting in _SETTINGS.value:
        cfg = dataclasses.replace(preset.settings[setting], seed=seed, runtime=_RUNTIME.value)
        _run_one(cfg, data, os.path.join(root, setting, f"seed_{seed}"))
  finally:
    runtime.shutdown()
  runs = plotting.collect(root)
  rows = plotting.table_rows(runs)
  plotting.write_table(rows, os.path.join(root, "results.csv"), os.path.join(root, "results.md"))
  plotting.draw_figures(runs, root, title=f"{preset.name} preset, {data_cfg.dataset}")
  print(plotting.markdown(rows))


if __name__ == "__main__":
  app.run(main)
