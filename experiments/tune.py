r"""Tunes every setting with the same budget on a validation split (never the test set).

  python -m experiments.tune --preset=cpu --trials=4 --output_dir=results/tune_cpu

For each setting, `--trials` configurations are drawn at random (seeded, so a
rerun draws the same ones) from the documented grid SEARCH_SPACE of dopamine_tff/tuning.py; every
setting gets the same number. Each trial trains for the preset's epochs on
the hospitals' training data minus a stratified validation share
(`--validation_fraction` of every hospital's data) and is scored by its final
validation accuracy; the test set is not loaded. Private settings are tuned
at one fixed target (`--target_epsilon`, the preset's delta): for each trial
sigma is calibrated so that the planned steps meet the target (RDP), and the
run also stops at the budget. Trials already finished are reused (the search
resumes); `--force` reruns them.

A *_pretrained preset's trials (or every trial with --init_weights) start from
the public weights and draw from tuning.PRETRAINED_SEARCH_SPACE, which differs
only in smaller learning rates; the public pretraining runs once, on public
data only, cached under <output_dir>/public by its hash.

Writes <output_dir>/<setting>/trial_<i>/ (run files), search.csv and
search.md (every trial, best per setting marked) and chosen.json (the
winners' hyper-parameters, which dopamine_tff/presets.py copies).

Tuning on the private data is itself a use of it: the epsilon a final run
prints does not include the cost of choosing its hyper-parameters (see
docs/privacy.md, "Tuning costs privacy").
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import configs
from dopamine_tff import init_weights
from dopamine_tff import presets
from dopamine_tff import pretraining
from dopamine_tff import runtime
from dopamine_tff import tuning
from dopamine_tff.data import loaders
from dopamine_tff.program import loop
from experiments import cli_lib
from experiments import flags_lib

flags.DEFINE_enum("preset", "cpu", list(presets.PRESETS), "Preset to tune.")
flags.DEFINE_list("settings", list(configs.SETTINGS), "Settings to tune.")
flags.DEFINE_integer("trials", 4, "Configurations per setting (the same for all).")
flags.DEFINE_float("validation_fraction", 0.2, "Share of training data used to score.")
flags.DEFINE_float("target_epsilon", 10.4, "Epsilon every private setting is tuned at.")
flags.DEFINE_integer("search_seed", 0, "Seed of the random draw of trials.")
flags.DEFINE_integer("seed", 0, "Seed of data, weights and noise of the trials.")
flags.DEFINE_string(
  "output_dir", None, "Where trials and the search table go (default: runs/tune/<preset>)."
)
flags.DEFINE_enum("runtime", "in_process", list(configs.RUNTIMES), "Runtime.")
flags.DEFINE_bool("force", False, "Rerun finished trials.")
flags.DEFINE_string(
  "init_weights",
  None,
  "Every trial starts from these weights (and draws from the pretrained grid). Default: a "
  "*_pretrained preset's own public pretraining (cached under <output_dir>/public), else random.",
)
flags.DEFINE_enum(
  "select_by",
  "accuracy",
  list(tuning.SELECT_BY),
  "The validation score a setting's best trial is chosen by: accuracy, kappa (quadratic "
  "weighted, DR grades) or referable_auc (grade >= 2); recorded in chosen.json.",
)
flags.DEFINE_string(
  "ablate",
  None,
  "Instead of searching: take this setting's chosen configuration from <output_dir>/"
  "chosen.json and toggle one free technique at a time (EMA, schedule, expected batch, "
  "augmentation multiplicity), scored the same way; writes ablation_<setting>.md.",
)


def _run_trial(cfg, data, data_cfg, run_dir, hparams, force: bool):
  """Runs a trial, or reuses its finished run when the hyper-parameters match."""
  summary_path = os.path.join(run_dir, "summary.json")
  reuse = not force and os.path.isfile(summary_path)
  if reuse:
    with open(os.path.join(run_dir, "hparams.json")) as f:
      reuse = {k: v for k, v in json.load(f).items() if k in hparams} == hparams
  if reuse:
    logging.info("reusing %s", run_dir)
    with open(summary_path) as f:
      return json.load(f)
  return loop.run(
    cfg,
    data,
    run_dir,
    hparams=hparams,
    data_config=data_cfg,
    options=configs.LoopOptions(checkpoint_every=50, overwrite=True, tensorboard=False),
    log=logging.info,
    rt=runtime.active(),
  )


def _ablate(setting, preset, data, data_cfg, root, values, start) -> None:
  with open(os.path.join(root, "chosen.json")) as f:
    chosen = json.load(f)["chosen"][setting]
  base = _base(setting, preset, values, start)
  lines = [
    f"| {setting.upper()} variant | validation accuracy | epsilon | rounds | sigma |",
    "|---|---|---|---|---|",
  ]
  for i, (name, params) in enumerate(tuning.ablation_variants(setting, chosen)):
    cfg = tuning.trial_config(base, params, data, values["target_epsilon"])
    hparams = json.loads(
      json.dumps(dict(dataclasses.asdict(cfg), variant=name), sort_keys=True, default=str)
    )
    run_dir = os.path.join(root, f"ablation_{setting}", f"variant_{i}")
    summary = _run_trial(cfg, data, data_cfg, run_dir, hparams, values["force"])
    eps = "-" if summary["epsilon"] is None else f"{summary['epsilon']:.2f}"
    sigma = f"{cfg.noise_multiplier:.4f}" if cfg.private else "-"
    lines.append(
      f"| {name} | {100 * summary['final_test_accuracy']:.2f} % | {eps} | {cfg.rounds} | {sigma} |"
    )
    print(lines[-1], flush=True)
  with open(os.path.join(root, f"ablation_{setting}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _row(setting, i, params, cfg, summary) -> dict:
  return {
    "setting": setting,
    "trial": i,
    **{f"param_{k}": v for k, v in sorted(params.items())},
    "rounds": cfg.rounds,
    "noise_multiplier": round(cfg.noise_multiplier, 4) if cfg.private else "",
    "epsilon": summary["epsilon"],
    "validation_accuracy": summary["final_test_accuracy"],
    "validation_kappa": summary.get("final_kappa"),
    "validation_referable_auc": summary.get("final_referable_auc"),
    "stop_reason": summary["stop_reason"],
  }


def _score(value) -> str:
  return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _markdown(rows, best) -> str:
  lines = [
    "| setting | trial | choices | rounds | sigma | epsilon | validation accuracy | kappa | "
    "referable AUC | best |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    choices = ", ".join(
      f"{k[len('param_') :]}={v}" for k, v in r.items() if k.startswith("param_") and v != ""
    )
    eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
    mark = "**best**" if best.get(r["setting"]) == r["trial"] else ""
    lines.append(
      f"| {r['setting'].upper()} | {r['trial']} | {choices} | {r['rounds']} | "
      f"{r['noise_multiplier'] or '-'} | {eps} | {100 * r['validation_accuracy']:.2f} % | "
      f"{_score(r.get('validation_kappa'))} | {_score(r.get('validation_referable_auc'))} | {mark} |"
    )
  return "\n".join(lines)


def _check(values) -> presets.Preset:
  """The preset, after refusing impossible flags (ValueError), before any loading."""
  preset = flags_lib.preset_settings(values["preset"], values["settings"])
  if values["trials"] < 1:
    raise ValueError(f"--trials must be >= 1, got {values['trials']}")
  if not 0 < values["validation_fraction"] < 1:
    raise ValueError(
      f"--validation_fraction must be in (0, 1), got {values['validation_fraction']}"
    )
  if not values["target_epsilon"] > 0:
    raise ValueError(f"--target_epsilon must be > 0, got {values['target_epsilon']}")
  if values["ablate"] and values["ablate"] not in tuning.SEARCH_SPACE:
    raise ValueError(f"--ablate={values['ablate']!r} is not a setting")
  if values["init_weights"] and not os.path.isfile(values["init_weights"]):
    raise ValueError(f"--init_weights={values['init_weights']}: no such file")
  if preset.needs_init_weights and not values["init_weights"]:
    raise ValueError(
      f"--preset={preset.name} starts every setting from {preset.needs_init_weights}: "
      "pass --init_weights=<that .npz>"
    )
  return preset


def _start(preset, root, values) -> str | None:
  """Where every trial starts: --init_weights, the preset's public pretraining
  (public data only, cached by its hash), or None (random weights)."""
  if values["init_weights"]:
    return values["init_weights"]
  if preset.pretrain is not None:
    return pretraining.cached(preset.pretrain, os.path.join(root, "public"), logging.info)
  return None


def _base(setting, preset, values, start):
  extra = {"init_weights": start} if start else {}
  return dataclasses.replace(
    preset.settings[setting], seed=values["seed"], runtime=values["runtime"], **extra
  )


def _search_setting(setting, preset, data, data_cfg, root, values, start) -> list[dict]:
  """Every trial of one setting: its rows of search.csv."""
  base = _base(setting, preset, values, start)
  rows = []
  trials = tuning.draw_trials(
    setting, values["trials"], values["search_seed"], pretrained=start is not None
  )
  for i, params in enumerate(trials):
    cfg = tuning.trial_config(base, params, data, values["target_epsilon"])
    run_dir = os.path.join(root, setting, f"trial_{i}")
    hparams = json.loads(
      json.dumps(dict(dataclasses.asdict(cfg), trial=i, search=params), sort_keys=True, default=str)
    )
    summary = _run_trial(cfg, data, data_cfg, run_dir, hparams, values["force"])
    rows.append(_row(setting, i, params, cfg, summary))
    print(
      f"{setting} trial {i}: {params} -> validation accuracy "
      f"{summary['final_test_accuracy']:.4f}, epsilon {summary['epsilon']}",
      flush=True,
    )
  return rows


def _write_search(root, rows, chosen, preset, values, start) -> None:
  best = {s: c["trial"] for s, c in chosen.items()}
  fields = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith("s"), k))
  with open(os.path.join(root, "search.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  text = _markdown(rows, best)
  with open(os.path.join(root, "search.md"), "w") as f:
    f.write(text + "\n")
  blob = {
    "preset": preset.name,
    "trials_per_setting": values["trials"],
    "validation_fraction": values["validation_fraction"],
    "target_epsilon": values["target_epsilon"],
    "search_seed": values["search_seed"],
    "start": "random" if start is None else start,
    "start_sha256": None if start is None else init_weights.sha256_of(start),
    "grid": "pretrained" if start is not None else "from scratch",
    "select_by": values["select_by"],
    "chosen": {s: {k: v for k, v in c.items() if k != "trial"} for s, c in chosen.items()},
  }
  with open(os.path.join(root, "chosen.json"), "w") as f:
    json.dump(blob, f, indent=2, sort_keys=True)
  print(text)


def main(argv):
  del argv
  values = flags.FLAGS.flag_values_dict()
  with cli_lib.one_line_errors("tune", "run it again to resume the search"):
    preset = _check(values)
    root = values["output_dir"] or os.path.join("runs", "tune", preset.name)
    if values["ablate"] and not os.path.isfile(os.path.join(root, "chosen.json")):
      raise ValueError(f"no chosen.json in {root}; run the search first")
    data_cfg = dataclasses.replace(
      preset.data, seed=values["seed"], validation_fraction=values["validation_fraction"]
    )
    data = loaders.load(data_cfg)
    start = _start(preset, root, values)
    if values["runtime"] == "tff":
      runtime.start()
    try:
      if values["ablate"]:
        _ablate(values["ablate"], preset, data, data_cfg, root, values, start)
        return
      rows, chosen = [], {}
      for setting in values["settings"]:
        mine = _search_setting(setting, preset, data, data_cfg, root, values, start)
        rows += mine
        chosen[setting] = tuning.choose(mine, values["select_by"])
    finally:
      runtime.shutdown()
  _write_search(root, rows, chosen, preset, values, start)


if __name__ == "__main__":
  cli_lib.run(main, "tune")
