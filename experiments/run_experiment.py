r"""Runs one of the paper's five settings and writes its results.

Examples:
  python -m experiments.run_experiment --setting=fscdp --dataset=digits \
      --num_hospitals=10 --rounds=300 --output_dir=/tmp/fscdp
  python -m experiments.run_experiment --flagfile=my.flags

Writes hparams.json, metrics.csv, summary.json, model.keras and
final_weights.npz to --output_dir (see dopamine_tff/training_loop.py).
"""

from __future__ import annotations

import json
import math
import sys

from absl import app
from absl import flags
from absl import logging

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import configs
from dopamine_tff import devices
from dopamine_tff import runtime
from dopamine_tff import training_loop
from dopamine_tff.data import loaders

_SETTING = flags.DEFINE_enum(
  "setting", "fscdp", list(configs.SETTINGS), "Which of the five settings."
)
_DATASET = flags.DEFINE_enum("dataset", "synthetic", list(loaders.DATASETS), "Data source.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  None,
  "Folder of real data: aptos (train.csv + train_images/), eyepacs (TFDS data dir).",
)
_HOSPITAL_DIRS = flags.DEFINE_list(
  "hospital_dirs",
  [],
  "aptos: one APTOS-format folder per hospital (each keeps its own images; K = their number).",
)
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples",
  0,
  "Synthetic set size, or a cap on real data: the first N rows / examples (0: all; "
  "synthetic: 3000).",
)
_MODEL = flags.DEFINE_enum("model", "small_cnn", ["small_cnn", "squeezenet"], "Model.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Image side (default: per data set).")
_NUM_HOSPITALS = flags.DEFINE_integer("num_hospitals", 10, "K, the number of hospitals.")
_PARTITION = flags.DEFINE_enum(
  "partition", "iid", ["iid", "unequal", "dirichlet"], "Split into hospitals."
)
_ALPHA = flags.DEFINE_float(
  "dirichlet_alpha", 0.5, "Label-skew concentration of --partition=dirichlet."
)
_TEST_FRACTION = flags.DEFINE_float(
  "test_fraction",
  0.2,
  "Share held out for testing (stratified by label; per hospital with a split given).",
)
_ROUNDS = flags.DEFINE_integer(
  "rounds", 100, "Rounds (fscdp/cdp: DP-SGD steps; c: epochs; f/fpdp: FedAvg rounds)."
)
_Q = flags.DEFINE_float("sampling_prob", 0.03425, "Poisson sampling probability q (fscdp, cdp).")
_BATCH = flags.DEFINE_integer("batch_size", 50, "Batch size B (c, f, fpdp, cdp with tf_privacy).")
_LOCAL_EPOCHS = flags.DEFINE_integer("local_epochs", 5, "Local epochs E (f, fpdp).")
_FRACTION = flags.DEFINE_float("client_fraction", 0.5, "Share of hospitals per round (f, fpdp).")
_SIGMA = flags.DEFINE_float("noise_multiplier", 1.15, "Noise multiplier sigma.")
_CLIP = flags.DEFINE_float("l2_norm_clip", 2.0, "Per-example clip norm C.")
_DELTA = flags.DEFINE_float("delta", 1e-4, "Delta of the reported (epsilon, delta).")
_TARGET_EPS = flags.DEFINE_float("target_epsilon", None, "Stop before exceeding this epsilon.")
_ACCOUNTANT = flags.DEFINE_enum(
  "accountant", "rdp", ["rdp", "pld", "both"], "rdp, pld, or both (budget on RDP)."
)
_CDP_IMPL = flags.DEFINE_enum("cdp_impl", "ours", ["ours", "tf_privacy"], "CDP implementation.")
_LR = flags.DEFINE_float("learning_rate", 0.002, "Learning rate.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "Momentum.")
_LR_SCHEDULE = flags.DEFINE_enum(
  "lr_schedule",
  "constant",
  ["constant", "cosine"],
  "Learning-rate schedule over --rounds (cosine: decays to 0; FedAvg settings: the server step).",
)
_AUGMENTATIONS = flags.DEFINE_integer(
  "augmentations",
  0,
  "Augmentation multiplicity m: m random flips/shifts per example, averaged before clipping "
  "(DP sensitivity unchanged; m times the compute; 0: off).",
)
_EMA = flags.DEFINE_float(
  "ema_decay",
  0.0,
  "EMA of the global weights for evaluation and the final model (post-processing, free; 0: off).",
)
_BOUND = flags.DEFINE_float(
  "secure_sum_bound", None, "Secure-sum range [-b, b] (default: derived)."
)
_SEED = flags.DEFINE_integer(
  "seed",
  0,
  "Seed of what is not secret: data split, initial weights, simulated dropouts, client "
  "selection. Noise, masks and keys come from the OS CSPRNG unless --insecure_seeded_noise.",
)
_SEEDED_NOISE = flags.DEFINE_bool(
  "insecure_seeded_noise",
  False,
  "Derive every noise share, Poisson mask, dither and SecAgg key from --seed for exact "
  "replays. INSECURE: the model is then not private against anyone who knows the seed "
  "(summary.json says so).",
)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 1, "Evaluate every this many rounds.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/dopamine_tff_run", "Where results go.")
_MAX_CALLS = flags.DEFINE_integer(
  "max_concurrent_calls", -1, "TFF worker: max concurrent client calls (<=0: no limit)."
)
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers", 1, "TFF runtime: local workers to split each round's hospitals across."
)
_WORKER_BINARY = flags.DEFINE_string(
  "worker_binary", None, "TFF worker binary to start (e.g. a CUDA build)."
)
_RUNTIME = flags.DEFINE_enum(
  "runtime",
  "tff",
  ["tff", "in_process"],
  "tff: TFF's C++ worker; in_process: same TF code here (GPU).",
)
_GPUS = flags.DEFINE_string("gpus", None, "in_process: GPU indices to use ('0,1'), 'none', or all.")
_MEMORY_GROWTH = flags.DEFINE_bool("memory_growth", True, "Grow GPU memory as needed.")
_DROPOUT_PROB = flags.DEFINE_float(
  "dropout_prob", 0.0, "Chance a hospital fails to deliver in a round."
)
_DROPOUT_SCHEDULE = flags.DEFINE_string(
  "dropout_schedule", "", "Deterministic dropouts: 'round:h1,h2;round:h3' (1-based rounds)."
)
_MIN_SURVIVING = flags.DEFINE_integer(
  "min_surviving_hospitals",
  None,
  "M: noise share sigma*C/sqrt(M); rounds with < M survivors are skipped.",
)
_SECURE_AGG = flags.DEFINE_enum(
  "secure_aggregation",
  "none",
  ["none", "secagg", "secagg_plus"],
  "fscdp: 'none' (plain integer sum of the codes), 'secagg' (masked sums with Shamir "
  "dropout recovery) or 'secagg_plus' (k neighbours).",
)
_HARDENED_NOISE = flags.DEFINE_bool(
  "hardened_noise",
  False,
  "Draw each noise coordinate as the sum of 4 float64 Gaussians (Holohan and Braghin 2021; "
  "Opacus secure_mode) against floating-point attacks on the sampler. Same law, slower.",
)
_SECAGG_THRESHOLD = flags.DEFINE_integer(
  "secagg_threshold",
  None,
  "Shamir threshold t >= 2 (default: a majority of K for secagg; derived for secagg_plus).",
)
_SECAGG_NEIGHBOURS = flags.DEFINE_integer(
  "secagg_neighbours",
  None,
  "secagg_plus: neighbours k per hospital, even (default: the smallest k meeting 2^-40 "
  "security and 2^-20 correctness under the two assumptions below).",
)
_SECAGG_ADVERSARIAL = flags.DEFINE_float(
  "secagg_adversarial_fraction",
  0.05,
  "secagg_plus: share of hospitals assumed corrupted (colluding with the server).",
)
_SECAGG_DROPOUT_RATE = flags.DEFINE_float(
  "secagg_dropout_rate", 0.33, "secagg_plus: share of hospitals assumed to drop in a round."
)
_SECAGG_PRG = flags.DEFINE_enum(
  "secagg_prg",
  "chacha20",
  ["chacha20", "philox_insecure"],
  "Mask PRG: ChaCha20 (RFC 8439, in TF ops), or Philox (fast, NOT cryptographic: tests only).",
)
_SECAGG_UNMASK_DROPOUT = flags.DEFINE_float(
  "secagg_unmask_dropout_prob",
  0.0,
  "Chance a hospital that sent its masked update is gone before the unmasking.",
)
_COLLUDERS = flags.DEFINE_integer(
  "assumed_colluders",
  0,
  "fscdp: hospitals assumed to collude with the server; epsilon is also accounted for them.",
)
_PROVISION_COLLUDERS = flags.DEFINE_bool(
  "provision_for_colluders", False, "Size noise shares so the honest hospitals alone meet sigma."
)
_PRIVACY_UNIT = flags.DEFINE_enum(
  "privacy_unit",
  "example",
  ["example", "patient"],
  "What epsilon protects: one image, or all images of one patient (sampled together, "
  "their summed gradient clipped to C; needs patient ids).",
)
_AUDIT = flags.DEFINE_bool("audit", False, "Run membership-inference attacks on the final model.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
  "checkpoint_every", 10, "Checkpoint every N rounds (0: never)."
)
_RESUME = flags.DEFINE_bool(
  "resume",
  False,
  "Continue from the newest checkpoint in --output_dir (--rounds, --target_epsilon and "
  "--eval_every may change).",
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace a previous run's files in --output_dir instead of refusing."
)
_TENSORBOARD = flags.DEFINE_bool(
  "tensorboard", True, "Write TensorBoard events to <output_dir>/tensorboard."
)
_WORKER_ADDRESS = flags.DEFINE_string(
  "worker_address", None, "host:port of a running TFF worker to use."
)


def parse_schedule(text: str) -> tuple:
  """'3:0,2;5:1' -> ((3, (0, 2)), (5, (1,))). Raises ValueError naming the bad part."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    try:
      round_text, hospitals = part.split(":")
      out.append((int(round_text), tuple(int(h) for h in hospitals.split(",") if h.strip())))
    except ValueError:
      raise ValueError(f"dropout_schedule: cannot parse {part!r}; expected 'round:h1,h2'") from None
  return tuple(out)


def _configs():
  num_hospitals = _NUM_HOSPITALS.value
  if _HOSPITAL_DIRS.value and not flags.FLAGS["num_hospitals"].present:
    num_hospitals = len(_HOSPITAL_DIRS.value)
  data = loaders.DataConfig(
    dataset=_DATASET.value,
    data_dir=_DATA_DIR.value,
    hospital_dirs=tuple(_HOSPITAL_DIRS.value),
    image_size=_IMAGE_SIZE.value,
    num_hospitals=num_hospitals,
    partition=_PARTITION.value,
    dirichlet_alpha=_ALPHA.value,
    test_fraction=_TEST_FRACTION.value,
    num_examples=_NUM_EXAMPLES.value,
    seed=_SEED.value,
  )
  train = configs.TrainConfig(
    setting=_SETTING.value,
    rounds=_ROUNDS.value,
    model=_MODEL.value,
    learning_rate=_LR.value,
    momentum=_MOMENTUM.value,
    batch_size=_BATCH.value,
    local_epochs=_LOCAL_EPOCHS.value,
    client_fraction=_FRACTION.value,
    sampling_prob=_Q.value,
    noise_multiplier=_SIGMA.value,
    l2_norm_clip=_CLIP.value,
    delta=_DELTA.value,
    target_epsilon=_TARGET_EPS.value,
    accountant=_ACCOUNTANT.value,
    cdp_impl=_CDP_IMPL.value,
    secure_sum_bound=_BOUND.value,
    seed=_SEED.value,
    insecure_seeded_noise=_SEEDED_NOISE.value,
    hardened_noise=_HARDENED_NOISE.value,
    eval_every=_EVAL_EVERY.value,
    runtime=_RUNTIME.value,
    dropout_prob=_DROPOUT_PROB.value,
    dropout_schedule=parse_schedule(_DROPOUT_SCHEDULE.value),
    min_surviving_hospitals=_MIN_SURVIVING.value,
    secure_aggregation=_SECURE_AGG.value,
    secagg_threshold=_SECAGG_THRESHOLD.value,
    secagg_neighbours=_SECAGG_NEIGHBOURS.value,
    secagg_prg=_SECAGG_PRG.value,
    secagg_adversarial_fraction=_SECAGG_ADVERSARIAL.value,
    secagg_dropout_rate=_SECAGG_DROPOUT_RATE.value,
    secagg_unmask_dropout_prob=_SECAGG_UNMASK_DROPOUT.value,
    assumed_colluders=_COLLUDERS.value,
    provision_for_colluders=_PROVISION_COLLUDERS.value,
    privacy_unit=_PRIVACY_UNIT.value,
    ema_decay=_EMA.value,
    lr_schedule=_LR_SCHEDULE.value,
    augmentations=_AUGMENTATIONS.value,
  )
  # Before any data is read or generated: what K alone refutes, and a patient
  # unit on data sets that carry no patient ids.
  train.check_hospitals(num_hospitals)
  if train.private and train.privacy_unit == "patient" and data.dataset in ("synthetic", "digits"):
    raise ValueError(
      f"privacy_unit=patient needs patient ids, and --dataset={data.dataset} has none (use "
      "eyepacs, or aptos with a patient_id column)"
    )
  rt = runtime.RuntimeConfig(
    max_concurrent_computation_calls=_MAX_CALLS.value,
    worker_binary=_WORKER_BINARY.value,
    address=_WORKER_ADDRESS.value,
    num_workers=_NUM_WORKERS.value,
  )
  return data, train, rt


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _main()
  except KeyboardInterrupt:  # a second Ctrl-C, or one outside the round loop
    print(
      f"run_experiment: interrupted; rerun with --resume to continue from the newest "
      f"checkpoint in {_OUTPUT_DIR.value}",
      file=sys.stderr,
    )
    sys.exit(130)


def _main():
  options = training_loop.LoopOptions(
    checkpoint_every=_CHECKPOINT_EVERY.value,
    resume=_RESUME.value,
    tensorboard=_TENSORBOARD.value,
    audit=_AUDIT.value,
    overwrite=_OVERWRITE.value,
  )
  try:
    data_cfg, train_cfg, rt_cfg = _configs()
    training_loop.check_output_dir(_OUTPUT_DIR.value, options)
  except ValueError as e:
    print(f"run_experiment: error: {e}", file=sys.stderr)
    sys.exit(2)
  own = flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])
  hparams = {f.name: f.value for f in own}
  try:
    data = loaders.load(data_cfg)
  except ValueError as e:
    print(f"run_experiment: error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    gpus = devices.configure(devices.parse_gpus(_GPUS.value), _MEMORY_GROWTH.value)
  except ValueError as e:
    print(f"run_experiment: error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("visible GPUs: %s", gpus or "none (CPU)")
  tf_privacy_cdp = train_cfg.setting == "cdp" and train_cfg.cdp_impl == "tf_privacy"
  uses_tff = train_cfg.runtime == "tff" and not tf_privacy_cdp
  if uses_tff:
    runtime.start(rt_cfg)
  try:
    summary = training_loop.run(
      train_cfg,
      data,
      _OUTPUT_DIR.value,
      hparams=hparams,
      data_config=data_cfg,
      options=options,
      log=logging.info,
    )
  except ValueError as e:  # a configuration that only the data can refute
    print(f"run_experiment: error: {e}", file=sys.stderr)
    sys.exit(2)
  except training_loop.Interrupted as e:
    print(f"run_experiment: {e} (in {_OUTPUT_DIR.value})", file=sys.stderr)
    sys.exit(130)
  finally:
    runtime.shutdown()
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
    f"{train_cfg.setting.upper()} on {data.name}: test accuracy "
    f"{summary['final_test_accuracy']:.4f} (majority class {summary['majority_class_accuracy']:.4f}) "
    f"after {rounds_text} ({summary['epochs']:.2f} epochs), {eps_text}; "
    f"stopped: {summary['stop_reason']}; results in {_OUTPUT_DIR.value}"
  )
  print(
    json.dumps({k: summary[k] for k in ("final_test_accuracy", "epsilon", "delta", "rounds_run")})
  )


if __name__ == "__main__":
  app.run(main)
