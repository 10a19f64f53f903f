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

Writes <output_dir>/<setting>/trial_<i>/ (run files), search.csv and
search.md (every trial, best per setting marked) and chosen.json (the
winners' hyper-parameters, which dopamine_tff/presets.py copies).

Tuning on the private data is itself a use of it: the epsilon a final run
prints does not include the cost of choosing its hyper-parameters (see
README, "Tuning costs privacy").
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import configs
from dopamine_tff import presets
from dopamine_tff import runtime
from dopamine_tff import training_loop
from dopamine_tff import tuning
from dopamine_tff.data import loaders

_PRESET = flags.DEFINE_enum("preset", "cpu", list(presets.PRESETS), "Preset to tune.")
_SETTINGS = flags.DEFINE_list("settings", list(configs.SETTINGS), "Settings to tune.")
_TRIALS = flags.DEFINE_integer("trials", 4, "Configurations per setting (the same for all).")
_VAL = flags.DEFINE_float("validation_fraction", 0.2, "Share of training data used to score.")
_TARGET = flags.DEFINE_float("target_epsilon", 10.4, "Epsilon every private setting is tuned at.")
_SEARCH_SEED = flags.DEFINE_integer("search_seed", 0, "Seed of the random draw of trials.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of data, weights and noise of the trials.")
_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", None, "Where trials and the search table go (default: runs/tune/<preset>)."
)
_RUNTIME = flags.DEFINE_enum("runtime", "in_process", ["tff", "in_process"], "Runtime.")
_FORCE = flags.DEFINE_bool("force", False, "Rerun finished trials.")
_ABLATE = flags.DEFINE_string(
  "ablate",
  None,
  "Instead of searching: take this setting's chosen configuration from <output_dir>/"
  "chosen.json and toggle one free technique at a time (EMA, schedule, expected batch, "
  "augmentation multiplicity), scored the same way; writes ablation_<setting>.md.",
)


def _run_trial(cfg, data, data_cfg, run_dir, hparams):
  """Runs a trial, or reuses its finished run when the hyper-parameters match."""
  summary_path = os.path.join(run_dir, "summary.json")
  reuse = not _FORCE.value and os.path.isfile(summary_path)
  if reuse:
    with open(os.path.join(run_dir, "hparams.json")) as f:
      reuse = {k: v for k, v in json.load(f).items() if k in hparams} == hparams
  if reuse:
    logging.info("reusing %s", run_dir)
    with open(summary_path) as f:
      return json.load(f)
  return training_loop.run(
    cfg,
    data,
    run_dir,
    hparams=hparams,
    data_config=data_cfg,
    options=training_loop.LoopOptions(checkpoint_every=50, overwrite=True, tensorboard=False),
    log=logging.info,
  )


def _ablate(setting, preset, data, data_cfg, root) -> None:
  with open(os.path.join(root, "chosen.json")) as f:
    chosen = json.load(f)["chosen"][setting]
  base = dataclasses.replace(preset.settings[setting], seed=_SEED.value, runtime=_RUNTIME.value)
  lines = [
    f"| {setting.upper()} variant | validation accuracy | epsilon | rounds | sigma |",
    "|---|---|---|---|---|",
  ]
  for i, (name, params) in enumerate(tuning.ablation_variants(setting, chosen)):
    cfg = tuning.trial_config(base, params, data, _TARGET.value)
    hparams = json.loads(
      json.dumps(dict(dataclasses.asdict(cfg), variant=name), sort_keys=True, default=str)
    )
    run_dir = os.path.join(root, f"ablation_{setting}", f"variant_{i}")
    summary = _run_trial(cfg, data, data_cfg, run_dir, hparams)
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
    "stop_reason": summary["stop_reason"],
  }


def _markdown(rows, best) -> str:
  lines = [
    "| setting | trial | choices | rounds | sigma | epsilon | validation accuracy | best |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    choices = ", ".join(
      f"{k[len('param_') :]}={v}" for k, v in r.items() if k.startswith("param_") and v != ""
    )
    eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
    mark = "**best**" if best.get(r["setting"]) == r["trial"] else ""
    lines.append(
      f"| {r['setting'].upper()} | {r['trial']} | {choices} | {r['rounds']} | "
      f"{r['noise_multiplier'] or '-'} | {eps} | {100 * r['validation_accuracy']:.2f} % | {mark} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  try:
    preset = presets.get(_PRESET.value)
    unknown = set(_SETTINGS.value) - set(preset.settings)
    if unknown:
      raise ValueError(f"unknown settings {sorted(unknown)}")
    if _TRIALS.value < 1:
      raise ValueError(f"--trials must be >= 1, got {_TRIALS.value}")
    if not 0 < _VAL.value < 1:
      raise ValueError(f"--validation_fraction must be in (0, 1), got {_VAL.value}")
    if not _TARGET.value > 0:
      raise ValueError(f"--target_epsilon must be > 0, got {_TARGET.value}")
    data_cfg = dataclasses.replace(preset.data, seed=_SEED.value, validation_fraction=_VAL.value)
  except ValueError as e:
    print(f"tune: error: {e}", file=sys.stderr)
    sys.exit(2)
  root = _OUTPUT_DIR.value or os.path.join("runs", "tune", preset.name)
  data = loaders.load(data_cfg)
  if _ABLATE.value:
    if _ABLATE.value not in tuning.SEARCH_SPACE:
      print(f"tune: error: --ablate={_ABLATE.value!r} is not a setting", file=sys.stderr)
      sys.exit(2)
    if not os.path.isfile(os.path.join(root, "chosen.json")):
      print(f"tune: error: no chosen.json in {root}; run the search first", file=sys.stderr)
      sys.exit(2)
    if _RUNTIME.value == "tff":
      runtime.start()
    try:
      _ablate(_ABLATE.value, preset, data, data_cfg, root)
    finally:
      runtime.shutdown()
    return
  rows, best, chosen = [], {}, {}
  if _RUNTIME.value == "tff":
    runtime.start()
  try:
    for setting in _SETTINGS.value:
      base = dataclasses.replace(preset.settings[setting], seed=_SEED.value, runtime=_RUNTIME.value)
      for i, params in enumerate(tuning.draw_trials(setting, _TRIALS.value, _SEARCH_SEED.value)):
        cfg = tuning.trial_config(base, params, data, _TARGET.value)
        run_dir = os.path.join(root, setting, f"trial_{i}")
        hparams = json.loads(
          json.dumps(
            dict(dataclasses.asdict(cfg), trial=i, search=params), sort_keys=True, default=str
          )
        )
        summary = _run_trial(cfg, data, data_cfg, run_dir, hparams)
        rows.append(_row(setting, i, params, cfg, summary))
        print(
          f"{setting} trial {i}: {params} -> validation accuracy "
          f"{summary['final_test_accuracy']:.4f}, epsilon {summary['epsilon']}",
          flush=True,
        )
      mine = [r for r in rows if r["setting"] == setting]
      top = max(mine, key=lambda r: r["validation_accuracy"])
      best[setting] = top["trial"]
      chosen[setting] = {
        **{k[len("param_") :]: v for k, v in top.items() if k.startswith("param_")},
        "validation_accuracy": top["validation_accuracy"],
        "noise_multiplier_at_tuning": top["noise_multiplier"],
      }
  except KeyboardInterrupt:
    print("tune: interrupted; run it again to resume the search", file=sys.stderr)
    sys.exit(130)
  finally:
    runtime.shutdown()
  fields = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith("s"), k))
  with open(os.path.join(root, "search.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  text = _markdown(rows, best)
  with open(os.path.join(root, "search.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(root, "chosen.json"), "w") as f:
    json.dump(
      {
        "preset": preset.name,
        "trials_per_setting": _TRIALS.value,
        "validation_fraction": _VAL.value,
        "target_epsilon": _TARGET.value,
        "search_seed": _SEARCH_SEED.value,
        "chosen": chosen,
      },
      f,
      indent=2,
      sort_keys=True,
    )
  print(text)


if __name__ == "__main__":
  app.run(main)
