r"""Runs the paper's five settings over several seeds and draws Figure 1.

  python -m experiments.reproduce_paper --preset=cpu
  python -m experiments.reproduce_paper --preset=cpu --dataset=aptos \
      --data_dir=/data/aptos2019 --image_size=64       # the cpu recipe on APTOS
  python -m experiments.reproduce_paper --preset=paper --data_dir=/data/aptos2019 \
      --runtime=in_process                             # on a GPU host

Each run goes to <output_dir>/<setting>/seed_<n>/ (the files of
run_experiment); the default output_dir is runs/reproduce/<preset>, outside
the committed results/ tree. A finished run whose hyper-parameters and data
match is reused, and the driver says how many were reused; --force reruns
everything. An unfinished run resumes from its checkpoint. At the end:
results.csv, results.md (mean, std and 95 % interval over seeds) and the
figures as PNG and PDF. A *_pretrained preset first pretrains on the built-in
public source once (<output_dir>/public/, reused by content hash) and starts
every setting and seed from those weights.

The data is the preset's unless --dataset, --data_dir, --image_size or
--num_examples say otherwise; every run's hparams.json records the data used.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import configs
from dopamine_tff import devices
from dopamine_tff import grading_report
from dopamine_tff import plotting
from dopamine_tff import presets
from dopamine_tff import pretraining
from dopamine_tff import results_tables
from dopamine_tff import runtime
from dopamine_tff.data import loaders
from dopamine_tff.program import loop
from experiments import cli_lib
from experiments import flags_lib

flags.DEFINE_enum("preset", "smoke", list(presets.PRESETS), "Which preset.")
flags.DEFINE_integer("seeds", None, "Seeds per setting (default: the preset's).")
flags.DEFINE_list("settings", ["c", "cdp", "f", "fpdp", "fscdp"], "Settings to run.")
flags.DEFINE_enum("dataset", None, list(loaders.DATASETS), "Data set instead of the preset's.")
flags.DEFINE_string(
  "data_dir", None, "Folder of the aptos / eyepacs data (needed by --preset=paper)."
)
flags.DEFINE_integer("image_size", None, "Image side instead of the preset's.")
flags.DEFINE_integer(
  "num_examples",
  None,
  "Examples (synthetic) or a cap on real data (0: all) instead of the preset's.",
)
flags.DEFINE_string(
  "output_dir", None, "Where runs and figures go (default: runs/reproduce/<preset>)."
)
flags.DEFINE_bool("force", False, "Rerun finished runs instead of reusing them.")
flags.DEFINE_enum("runtime", "tff", list(configs.RUNTIMES), "Runtime of the rounds.")
flags.DEFINE_bool(
  "insecure_seeded_noise",
  False,
  "Noise, masks and keys from the seed (exact replays; NOT private against anyone who "
  "knows the seed). Default: the OS CSPRNG.",
)
flags.DEFINE_string("gpus", None, "in_process: GPU indices ('0,1'), 'none', or all.")
flags.DEFINE_bool("audit", False, "Membership-inference audit of every final model.")
flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint every N rounds.")
flags.DEFINE_string(
  "init_weights",
  None,
  "Every setting starts from these weights (instead of the preset's own pretraining); "
  "needed by --preset=paper_pretrained (the converted ImageNet SqueezeNet 1.1).",
)
flags.DEFINE_string(
  "trainable", "all", "Which layers train in every setting: all, head or from:<layer>."
)


def data_config(preset: presets.Preset, values) -> loaders.DataConfig:
  """The preset's data with the command line's overrides; ValueError when impossible."""
  data_cfg = preset.data
  dataset = values["dataset"] or data_cfg.dataset
  changes = {"dataset": dataset}
  if dataset != data_cfg.dataset:
    changes["num_examples"] = 0  # the preset's count is the synthetic set's size
    changes["data_dir"] = None
  if values["image_size"] is not None:
    changes["image_size"] = values["image_size"]
  if values["num_examples"] is not None:
    changes["num_examples"] = values["num_examples"]
  if values.get("init_weights"):  # the weights' own input scaling (their .json), if recorded
    from dopamine_tff import init_weights

    wanted = init_weights.expected_normalization(values["init_weights"])
    if wanted is not None:
      changes["normalization"] = wanted
  if values["data_dir"]:
    if dataset not in ("aptos", "eyepacs"):
      raise ValueError(
        f"--data_dir is for --dataset=aptos or eyepacs, but --preset={preset.name} trains on "
        f"{dataset}; add --dataset=aptos (or eyepacs) to train on your folder"
      )
    changes["data_dir"] = values["data_dir"]
  elif dataset in ("aptos", "eyepacs") and (
    changes.get("data_dir", data_cfg.data_dir) in (None, "APTOS_DIR")
  ):
    raise ValueError(f"--preset={preset.name} on {dataset} needs --data_dir (the data folder)")
  return dataclasses.replace(data_cfg, **changes)


def _hparams(cfg, data_cfg, preset_name) -> dict:
  blob = dict(
    dataclasses.asdict(cfg),
    preset=preset_name,
    data=dict(dataclasses.asdict(data_cfg), image_size=data_cfg.resolved_image_size),
  )
  return json.loads(json.dumps(blob, sort_keys=True, default=str))


def _reusable(run_dir, hparams) -> bool:
  """True when run_dir holds a finished run of these hyper-parameters and data."""
  if not os.path.isfile(os.path.join(run_dir, "summary.json")):
    return False
  try:
    with open(os.path.join(run_dir, "hparams.json")) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError):
    saved = {}
  saved = {k: v for k, v in saved.items() if k in hparams}
  ignore = ("runtime", "num_train_examples")
  diff = sorted(k for k in hparams if k not in ignore and saved.get(k) != hparams[k])
  if diff:
    raise ValueError(
      f"{run_dir} holds a finished run of other settings ({', '.join(diff)} differ); "
      "pass --force to rerun it or choose another --output_dir"
    )
  return True


def _run_one(cfg, data_cfg, data, run_dir, values) -> bool:
  """Runs (or resumes) one setting and seed; False when a finished run was reused."""
  hparams = _hparams(cfg, data_cfg, values["preset"])
  if not values["force"] and _reusable(run_dir, hparams):
    logging.info("reusing the finished run in %s", run_dir)
    return False
  options = configs.LoopOptions(
    checkpoint_every=values["checkpoint_every"],
    resume=not values["force"],
    overwrite=values["force"],
    audit=values["audit"],
  )
  summary = loop.run(
    cfg,
    data,
    run_dir,
    hparams=hparams,
    data_config=data_cfg,
    options=options,
    log=logging.info,
    rt=runtime.active(),
  )
  logging.info(
    "%s: accuracy %.4f epsilon %s", run_dir, summary["final_test_accuracy"], summary["epsilon"]
  )
  return True


def _plan(preset, data_cfg, values) -> list:
  """[(data config, [(setting, train config)])] per seed, all checked before any loading."""
  if preset.needs_init_weights and not values.get("init_weights"):
    raise ValueError(
      f"--preset={preset.name} starts every setting from {preset.needs_init_weights}: "
      "pass --init_weights=<that .npz> (docs/pretraining.md)"
    )
  start = {"init_weights": values["init_weights"]} if values.get("init_weights") else {}
  out = []
  for seed in range(values["seeds"] or preset.seeds):
    seeded_data = dataclasses.replace(data_cfg, seed=seed)
    runs = []
    for setting in values["settings"]:
      cfg = dataclasses.replace(
        preset.settings[setting],
        seed=seed,
        runtime=values["runtime"],
        insecure_seeded_noise=values["insecure_seeded_noise"],
        trainable=values.get("trainable", "all"),
        **start,
      )
      configs.check_compatible(cfg, seeded_data)
      runs.append((setting, cfg))
    out.append((seeded_data, runs))
  return out


def _run_all(plan, root, values) -> tuple[int, int]:
  """Every planned run; returns (runs trained, runs reused)."""
  ran = reused = 0
  if values["runtime"] == "tff":
    runtime.start()
  try:
    for data_cfg, runs in plan:
      data = loaders.load(data_cfg)
      for setting, cfg in runs:
        run_dir = os.path.join(root, setting, f"seed_{data_cfg.seed}")
        if _run_one(cfg, data_cfg, data, run_dir, values):
          ran += 1
        else:
          reused += 1
  finally:
    runtime.shutdown()
  return ran, reused


def main(argv):
  del argv
  values = flags.FLAGS.flag_values_dict()
  with cli_lib.one_line_errors("reproduce_paper", "start it again to resume"):
    preset = flags_lib.preset_settings(values["preset"], values["settings"])
    data_cfg = data_config(preset, values)
    devices.configure(devices.parse_gpus(values["gpus"]))
    root = values["output_dir"] or os.path.join("runs", "reproduce", preset.name)
    plan = _plan(preset, data_cfg, values)
    if preset.pretrain is not None and not values["init_weights"]:  # once, cached by hash
      public = pretraining.cached(preset.pretrain, os.path.join(root, "public"), logging.info)
      plan = [
        (d, [(s, dataclasses.replace(c, init_weights=public)) for s, c in runs]) for d, runs in plan
      ]
    ran, reused = _run_all(plan, root, values)
  if reused:
    print(
      f"{reused}/{ran + reused} runs reused from {root} (finished earlier with the same "
      "settings; --force reruns them)"
    )
  runs = results_tables.collect(root)
  rows = results_tables.table_rows(runs)
  grades = grading_report.markdown_of(runs)
  results_tables.write_table(
    rows, os.path.join(root, "results.csv"), os.path.join(root, "results.md"), grades
  )
  title = f"{preset.name} preset, {data_cfg.dataset}"
  plotting.draw_figures(runs, root, title=title)
  grading_report.draw(runs, root, title=title)
  print(results_tables.markdown(rows) + (f"\n\n{grades}" if grades else ""))
  print(f"{ran} runs trained, {reused} reused; table and figures in {root}")


if __name__ == "__main__":
  cli_lib.run(main, "reproduce_paper")
