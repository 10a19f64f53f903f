r"""Runs one of the paper's five settings and writes its results.

Examples:
  python -m experiments.run_experiment --setting=fscdp --dataset=digits \
      --num_hospitals=10 --rounds=300 --output_dir=/tmp/fscdp
  python -m experiments.run_experiment --flagfile=my.flags

Writes hparams.json, metrics.csv, summary.json, model.keras and
final_weights.npz to --output_dir (see dopamine_tff/program/loop.py).
"""

from __future__ import annotations

import json
import math
import sys

from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import configs
from dopamine_tff import devices
from dopamine_tff import models
from dopamine_tff import runtime
from dopamine_tff.data import loaders
from dopamine_tff.data import partition
from dopamine_tff.program import loop
from dopamine_tff.program import run_dir
from experiments import cli_lib
from experiments import flags_lib

flags.DEFINE_enum("setting", "fscdp", list(configs.SETTINGS), "Which of the five settings.")
flags.DEFINE_enum("dataset", "synthetic", list(loaders.DATASETS), "Data source.")
flags.DEFINE_string(
  "data_dir",
  None,
  "Folder of real data: aptos (train.csv + train_images/), eyepacs (TFDS data dir).",
)
flags.DEFINE_list(
  "hospital_dirs",
  [],
  "aptos: one APTOS-format folder per hospital (each keeps its own images; K = their number).",
)
flags.DEFINE_integer(
  "num_examples",
  0,
  "Synthetic set size, or a cap on real data: the first N rows / examples (0: all; "
  "synthetic: 3000).",
)
flags.DEFINE_enum("model", "small_cnn", list(models.MODELS), "Model.")
flags.DEFINE_integer(
  "image_size", None, "Image side (default: the recipe's on synthetic data, else per data set)."
)
flags.DEFINE_integer("num_hospitals", 10, "K, the number of hospitals.")
flags.DEFINE_enum("partition", "iid", list(partition.SCHEMES), "Split into hospitals.")
flags.DEFINE_float("dirichlet_alpha", 0.5, "Label-skew concentration of --partition=dirichlet.")
flags.DEFINE_float(
  "test_fraction",
  0.2,
  "Share held out for testing (stratified by label; per hospital with a split given).",
)
flags.DEFINE_integer(
  "rounds",
  None,
  "Rounds (fscdp/cdp: DP-SGD steps; c and cdp with tf_privacy: epochs; f/fpdp: FedAvg "
  "rounds) (default: the recipe of --setting; docs/experiments.md, 'The bare command').",
)
_RECIPE = "(default: the recipe of --setting; docs/experiments.md, 'The bare command')"
flags.DEFINE_float("sampling_prob", None, "Poisson sampling probability q (fscdp, cdp) " + _RECIPE)
flags.DEFINE_integer(
  "batch_size", None, "Batch size B (c, f, fpdp, cdp with tf_privacy) " + _RECIPE
)
flags.DEFINE_integer("local_epochs", None, "Local epochs E (f, fpdp) " + _RECIPE)
flags.DEFINE_float("client_fraction", None, "Share of hospitals per round (f, fpdp) " + _RECIPE)
flags.DEFINE_float("noise_multiplier", None, "Noise multiplier sigma " + _RECIPE)
flags.DEFINE_float("l2_norm_clip", None, "Per-example clip norm C " + _RECIPE)
flags.DEFINE_float("delta", 1e-4, "Delta of the reported (epsilon, delta).")
flags.DEFINE_float("target_epsilon", None, "Stop before exceeding this epsilon.")
flags.DEFINE_enum(
  "accountant", "rdp", list(configs.ACCOUNTANT_CHOICES), "rdp, pld, or both (budget on RDP)."
)
flags.DEFINE_enum("cdp_impl", "ours", list(configs.CDP_IMPLS), "CDP implementation.")
flags.DEFINE_float("learning_rate", None, "Learning rate " + _RECIPE)
flags.DEFINE_float("momentum", 0.9, "Momentum.")
flags.DEFINE_enum(
  "lr_schedule",
  None,
  list(configs.LR_SCHEDULES),
  "Learning-rate schedule over --rounds (cosine: decays to 0; FedAvg settings: the server "
  "step) " + _RECIPE,
)
flags.DEFINE_integer(
  "augmentations",
  0,
  "Augmentation multiplicity m: m random flips/shifts per example, averaged before clipping "
  "(DP sensitivity unchanged; m times the compute; 0: off).",
)
flags.DEFINE_float(
  "ema_decay",
  None,
  "EMA of the global weights for evaluation and the final model (post-processing, free; "
  "0: off) " + _RECIPE,
)
flags.DEFINE_float("secure_sum_bound", None, "Secure-sum range [-b, b] (default: derived).")
flags.DEFINE_integer(
  "seed",
  0,
  "Seed of what is not secret: data split, initial weights, simulated dropouts, client "
  "selection. Noise, masks and keys come from the OS CSPRNG unless --insecure_seeded_noise.",
)
flags.DEFINE_bool(
  "insecure_seeded_noise",
  False,
  "Derive every noise share, Poisson mask, dither and SecAgg key from --seed for exact "
  "replays. INSECURE: the model is then not private against anyone who knows the seed "
  "(summary.json says so).",
)
flags.DEFINE_integer("eval_every", None, "Evaluate every this many rounds " + _RECIPE)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/dopamine_tff_run", "Where results go.")
flags.DEFINE_integer(
  "max_concurrent_calls", -1, "TFF worker: max concurrent client calls (<=0: no limit)."
)
flags.DEFINE_integer(
  "num_workers", 1, "TFF runtime: local workers to split each round's hospitals across."
)
flags.DEFINE_string("worker_binary", None, "TFF worker binary to start (e.g. a CUDA build).")
flags.DEFINE_enum(
  "runtime",
  "tff",
  list(configs.RUNTIMES),
  "tff: TFF's C++ worker; in_process: same TF code here (GPU).",
)
flags.DEFINE_string("gpus", None, "in_process: GPU indices to use ('0,1'), 'none', or all.")
flags.DEFINE_bool("memory_growth", True, "Grow GPU memory as needed.")
flags.DEFINE_float("dropout_prob", 0.0, "Chance a hospital fails to deliver in a round.")
flags.DEFINE_string(
  "dropout_schedule", "", "Deterministic dropouts: 'round:h1,h2;round:h3' (1-based rounds)."
)
flags.DEFINE_integer(
  "min_surviving_hospitals",
  None,
  "M: noise share sigma*C/sqrt(M); rounds with < M survivors are skipped.",
)
flags.DEFINE_enum(
  "secure_aggregation",
  None,
  list(configs.SECURE_AGGREGATION),
  "fscdp: 'secagg' (masked sums with Shamir dropout recovery), 'secagg_plus' (k neighbours) "
  "or 'none' (plain integer sum of the codes). Default: fscdp secagg up to "
  f"{flags_lib.SECAGG_PLUS_FROM - 1} hospitals, secagg_plus from {flags_lib.SECAGG_PLUS_FROM}; "
  "the other settings none.",
)
flags.DEFINE_bool(
  "hardened_noise",
  False,
  "Draw each noise coordinate as the sum of 4 float64 Gaussians (Holohan and Braghin 2021; "
  "Opacus secure_mode) against floating-point attacks on the sampler. Same law, slower.",
)
flags.DEFINE_integer(
  "secagg_threshold",
  None,
  "Shamir threshold t >= 2 (default: a majority of K for secagg; derived for secagg_plus).",
)
flags.DEFINE_integer(
  "secagg_neighbours",
  None,
  "secagg_plus: neighbours k per hospital, even (default: the smallest k meeting 2^-40 "
  "security and 2^-20 correctness under the two assumptions below).",
)
flags.DEFINE_enum(
  "secagg_server_model",
  "malicious",
  ["malicious", "semi_honest"],
  "The server SecAgg withstands: malicious (it may lie about who dropped and split its "
  "requests across holders; larger thresholds and SecAgg+ graphs) or semi_honest.",
)
flags.DEFINE_float(
  "secagg_adversarial_fraction",
  0.05,
  "secagg_plus: share of hospitals assumed corrupted (colluding with the server).",
)
flags.DEFINE_float(
  "secagg_dropout_rate", 0.33, "secagg_plus: share of hospitals assumed to drop in a round."
)
flags.DEFINE_enum(
  "secagg_prg",
  "chacha20",
  list(configs.SECAGG_PRGS),
  "Mask PRG: ChaCha20 (RFC 8439, in TF ops), or Philox (fast, NOT cryptographic: tests only).",
)
flags.DEFINE_float(
  "secagg_unmask_dropout_prob",
  0.0,
  "Chance a hospital that sent its masked update is gone before the unmasking.",
)
flags.DEFINE_integer(
  "assumed_colluders",
  0,
  "fscdp: hospitals assumed to collude with the server; epsilon is also accounted for them.",
)
flags.DEFINE_bool(
  "provision_for_colluders", False, "Size noise shares so the honest hospitals alone meet sigma."
)
flags.DEFINE_enum(
  "privacy_unit",
  "example",
  list(configs.PRIVACY_UNITS),
  "What epsilon protects: one image, or all images of one patient (sampled together, "
  "their summed gradient clipped to C; needs patient ids).",
)
flags.DEFINE_enum(
  "normalization",
  "minus_one_one",
  list(loaders.NORMALIZATIONS),
  "Pixel scaling: minus_one_one (x * 2 - 1) or imagenet ((x - mean) / std, what ImageNet "
  "weights expect; --init_weights files say which in their .json).",
)
flags.DEFINE_string(
  "init_weights",
  None,
  "Start from these weights (.npz of our variables, e.g. from experiments/pretrain_public.py; "
  ".weights.h5 or .keras). Default: drawn from --seed.",
)
flags.DEFINE_bool(
  "reinit_head", False, "With --init_weights: draw a head of another class count afresh."
)
flags.DEFINE_string(
  "trainable",
  "all",
  "Which layers train: all, head (the last layer with weights) or from:<layer>; the others "
  "keep their starting weights (no gradient work, no noise).",
)
flags.DEFINE_bool("audit", False, "Run membership-inference attacks on the final model.")
flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint every N rounds (0: never).")
flags.DEFINE_bool(
  "resume",
  False,
  "Continue from the newest checkpoint in --output_dir (--rounds, --target_epsilon and "
  "--eval_every may change).",
)
flags.DEFINE_bool(
  "overwrite", False, "Replace a previous run's files in --output_dir instead of refusing."
)
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard events to <output_dir>/tensorboard.")
flags.DEFINE_bool(
  "record_timings",
  False,
  "Write each round's time to metrics.csv and TensorBoard: a side channel (a round's time "
  "grows with its Poisson batches); summary.json says so.",
)
flags.DEFINE_list(
  "worker_addresses",
  [],
  "host:port of running TFF workers (experiments/tff_worker.py) to split each round's "
  "hospitals across, on this host or others.",
)
flags.DEFINE_string("worker_address", None, "One running TFF worker (--worker_addresses=X).")
flags.DEFINE_string(
  "worker_tls_ca", None, "TLS to the workers: PEM CA (or self-signed certificate) they chain to."
)
flags.DEFINE_string("worker_tls_cert", None, "TLS client certificate (mutual TLS), PEM.")
flags.DEFINE_string("worker_tls_key", None, "Private key of --worker_tls_cert, PEM.")
flags.DEFINE_string(
  "worker_tls_server_name", None, "Name the workers' certificates carry, if not their host."
)
flags.DEFINE_bool(
  "insecure_transport",
  False,
  "Allow plain gRPC to workers on other hosts: the hospitals' data cross the network in clear.",
)
flags.DEFINE_float(
  "worker_unreachable_s",
  20.0,
  "A worker at --worker_addresses unreachable this long ends the run (after a checkpoint).",
)
flags.DEFINE_enum(
  "worker_data",
  "auto",
  ["auto", "files", "inline"],
  "How the hospitals' data reach the workers: files (the workers read this run's shard files: "
  "they must see this file system), inline (in each round's requests), auto (files for "
  "workers on this host, inline when any is on another).",
)


def main(argv):
  del argv  # cli_lib.run refuses positional arguments
  values = flags.FLAGS.flag_values_dict()
  present = {name for name in values if flags.FLAGS[name].present}
  own = {f.name for f in flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])}
  hint = f"rerun with --resume to continue from the newest checkpoint in {_OUTPUT_DIR.value}"
  with (
    cli_lib.one_line_errors("run_experiment", hint, where=values["output_dir"]),
    run_dir.exclusive(values["output_dir"]),  # before the directory is read: one run in it
  ):
    changes, recorded = [], {}
    if values["resume"] and run_dir.has_checkpoint(values["output_dir"]):
      # The run's own values, not today's defaults: a bare --resume keeps its budget.
      recorded = run_dir.recorded_flags(values["output_dir"])
      values, present, changes = flags_lib.resumed_values(values, present, recorded)
    given = {n for n in present if values[n] != flags.FLAGS[n].default}
    hparams = {name: values[name] for name in own}
    hparams.update({k: recorded[k] for k in ("defaults_from",) if k in recorded})
    if changes:
      hparams["resume_changes"] = changes
    summary, cfgs, data = _main(values, present, given, hparams, changes)
  _report(summary, cfgs.train, data.name, values["output_dir"])


def _main(values, present, given, hparams, changes=()):
  """Checks everything, loads the data, runs; ValueError for any bad input."""
  cfgs = flags_lib.run_configs(values, present, given)
  for change in changes:
    logging.info("resume changes %s", change)
  for warning in cfgs.warnings:
    print(f"run_experiment: warning: {warning}", file=sys.stderr)
  if cfgs.recipe:
    hparams.update(cfgs.recipe, defaults_from=cfgs.recipe_name)
    logging.info(
      "unset flags from the recipe (%s): %s",
      cfgs.recipe_name,
      " ".join(f"--{k}={v}" for k, v in sorted(cfgs.recipe.items())),
    )
  run_dir.check_output_dir(values["output_dir"], cfgs.options)
  if cfgs.options.resume and not run_dir.has_checkpoint(values["output_dir"]):
    raise ValueError(
      f"--resume: {values['output_dir']} holds no checkpoint to continue; drop --resume to "
      "start a run there"
    )
  train = cfgs.train
  rt = None
  if train.runtime == "tff" and not train.tf_privacy_baseline:
    rt = runtime.start(cfgs.runtime)  # reaches --worker_addresses before any data is read
  try:
    data = loaders.load(cfgs.data)
    gpus = devices.configure(devices.parse_gpus(values["gpus"]), values["memory_growth"])
    logging.info("visible GPUs: %s", gpus or "none (CPU)")
    summary = loop.run(
      train,
      data,
      values["output_dir"],
      hparams=hparams,
      data_config=cfgs.data,
      options=cfgs.options,
      log=logging.info,
      rt=rt,
    )
  finally:
    runtime.shutdown()
  return summary, cfgs, data


def _report(summary, train, data_name, output_dir) -> None:
  """The final line a user reads, and the machine-readable one after it."""
  eps = summary["epsilon"]
  skipped = summary["rounds_skipped"]
  rounds_text = f"{summary['rounds_run']} rounds" + (
    f" ({summary['rounds_released']} released, {skipped} skipped: aborted or too few hospitals)"
    if skipped
    else ""
  )
  eps_text = (
    f"({eps:.3f}, {summary['delta']:g})-DP"
    if eps is not None and math.isfinite(eps)
    else "not private"
  )
  print(
    f"{train.setting.upper()} on {data_name}: test accuracy "
    f"{summary['final_test_accuracy']:.4f} (majority class {summary['majority_class_accuracy']:.4f}) "
    f"after {rounds_text} ({summary['epochs']:.2f} epochs), {eps_text}; "
    f"stopped: {summary['stop_reason']}; results in {output_dir}"
  )
  print(
    json.dumps({k: summary[k] for k in ("final_test_accuracy", "epsilon", "delta", "rounds_run")})
  )


if __name__ == "__main__":
  cli_lib.run(main, "run_experiment")
