"""Benchmark section `round_overhead`: a Dopamine round against the training it protects.

For each case (model, image size, K hospitals) it times, interleaved in one
process (profiling.interleaved: one call of each in turn, so a drift of the
machine's speed hits all alike):

* the K hospitals' plain SGD steps and their DP steps (clipped sum and noise)
  on a batch of the Poisson sample's expected size, q N_k;
* the full FSCDP round of a trainer in both runtimes (in_process, tff) with
  each secure sum (none, secagg, secagg_plus), secrets from the OS CSPRNG as
  in a real run;
* the round's phases, each on the same shapes: sampling the batch from the
  hospital's data, the clipped sum (forward, backward, clipping), the noise,
  the pair dithers, the encoding (with the codes' copy out of TensorFlow),
  the sum of the codes, the server's decoding and step; SecAgg's masks and
  unmasking as the secure rounds measure them; and the TFF runtime's own cost
  (its round minus the in-process round of the same mode).

Each figure is the median of --repeats calls after --warmup; the range is
min-max. Ratios divide medians measured in the same interleaved loop.
"""

from __future__ import annotations

import math
import statistics
import tempfile

import numpy as np
import tensorflow as tf

from dopamine_tff import aggregation
from dopamine_tff import configs
from dopamine_tff import dither
from dopamine_tff import dp_sgd
from dopamine_tff import profiling
from dopamine_tff import quantization
from dopamine_tff import trainers
from dopamine_tff.data import loaders

# (model, image size, K, examples per hospital, q): about 12 examples a
# hospital's Poisson batch (q N_k), as in the probe.
CASES = (
  ("small_cnn", 32, 10, 240, 0.05),
  ("squeezenet", 64, 10, 240, 0.05),
  ("squeezenet", 224, 10, 240, 0.05),
  ("squeezenet", 64, 100, 60, 0.2),
)
QUICK_CASES = (("small_cnn", 16, 4, 40, 0.25),)
MODES = ("none", "secagg", "secagg_plus")
RUNTIMES = ("in_process", "tff")


def _data(size, k, per_hospital):
  cfg = loaders.DataConfig(
    dataset="synthetic",
    num_examples=int(k * per_hospital / 0.8) + 2,  # 80 % of them train
    image_size=size,
    num_hospitals=k,
  )
  return loaders.load(cfg)


def _trainer(data, model, q, rt, mode):
  cfg = configs.TrainConfig(
    setting="fscdp",
    model=model,
    rounds=1000,
    sampling_prob=q,
    noise_multiplier=1.0,
    l2_norm_clip=1.0,
    learning_rate=0.05,
    runtime=rt,
    secure_aggregation=mode,
  )
  return trainers.make_trainer(cfg, data, tempfile.mkdtemp())


class _Rounds:
  """A trainer's successive rounds; keeps the SecAgg rounds' own phase timers."""

  def __init__(self, trainer):
    self.trainer, self.state, self.r = trainer, trainer.initial_state(), 0
    self.phases: dict[str, list[float]] = {}

  def __call__(self):
    out = self.trainer.run(self.state, self.trainer.plan(self.r), self.r)
    self.state, self.r = out.state, self.r + 1
    for key in ("dithers_s", "secagg_masks_s", "secagg_unmask_s"):
      if key in out.measurements:
        self.phases.setdefault(key, []).append(out.measurements[key])


def _phase_fns(trainer, k, batch):
  """Per-phase callables on the trainer's shapes: name -> fn (K hospitals' worth)."""
  model = trainer.model_fn()
  x_all, y_all = trainer.datasets[0][:2]  # in-process: the arrays in memory
  xb, yb = x_all[:batch], y_all[:batch]
  weights = [tf.constant(w) for w in trainer.initial_weights]
  seed = tf.constant([1, 2], tf.int64)
  words, secure_sum = trainer.num_words, trainer.secure_sum
  degree = dither.dither_degree(k)
  keys = np.arange(8 * degree, dtype=np.uint32).reshape(-1, 8)
  signs = [(-1) ** i for i in range(degree)]
  query = dp_sgd.SeededGaussianSumQuery(1.0, 1.0 / math.sqrt(k), seed, 1)

  @tf.function
  def plain(w):
    dp_sgd.assign_weights(model, w)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(dp_sgd.loss_per_example(model(xb, training=True), yb))
    return tape.gradient(loss, model.trainable_variables)

  @tf.function
  def dp_step(w):
    dp_sgd.assign_weights(model, w)
    return dp_sgd.noisy_clipped_sum(
      model, xb, yb, sampling_prob=1.0, l2_norm_clip=1.0, noise_stddev=1.0, seed=seed
    ).noisy_sum

  @tf.function
  def sample(x, y):
    mask = dp_sgd.poisson_mask(tf.shape(y)[0], trainer.cfg.sampling_prob, seed)
    return tf.boolean_mask(x, mask), tf.boolean_mask(y, mask)

  @tf.function
  def clipped(w):
    dp_sgd.assign_weights(model, w)
    return dp_sgd._clipped_sum(model, xb, yb, None, None, 0, 1.0, seed)  # noqa: SLF001

  summed = clipped(weights)
  noise = tf.function(lambda s: query.get_noised_result(s, query.initial_global_state())[0])

  def dith():  # on the hospital's host (OpenSSL ChaCha20), as the rounds make it
    return quantization.host_dither(keys, signs, words)

  r = dith()
  noised = [tf.identity(v) for v in noise(summed)]
  encode = tf.function(lambda v, r: quantization.encode(v, r, secure_sum)[0])
  codes = [encode(noised, r).numpy() for _ in range(k)]
  total = aggregation.sum_in_process(codes)
  state = trainer.round.initialize()
  correction = np.zeros(words)
  return {
    "plain_steps": lambda: [plain(weights) for _ in range(k)],
    "dp_steps": lambda: [dp_step(weights) for _ in range(k)],
    "phase_sample": lambda: [sample(x_all, y_all) for _ in range(k)],
    "phase_clipped_sum": lambda: [clipped(weights) for _ in range(k)],
    "phase_noise": lambda: [noise(summed) for _ in range(k)],
    "phase_dithers": lambda: [dith() for _ in range(k)],
    "phase_encode_and_copy_out": lambda: [encode(noised, r).numpy() for _ in range(k)],
    "phase_sum": lambda: aggregation.sum_in_process(codes),
    "phase_decode_and_server_step": lambda: trainer.round.server_update(
      state, total, correction, 100
    ),
  }, degree


def _stats(times):
  return {
    "median_s": statistics.median(times),
    "min_s": min(times),
    "max_s": max(times),
    "times_s": times,
  }


def _case(model, size, k, per_hospital, q, opts) -> dict:
  data = _data(size, k, per_hospital)
  rounds = {
    f"round_{rt}_{mode}": _Rounds(_trainer(data, model, q, rt, mode))
    for rt in RUNTIMES
    for mode in MODES
  }
  base = rounds["round_in_process_none"].trainer
  batch = max(1, round(q * min(base.sizes)))
  phases, degree = _phase_fns(base, k, batch)
  times = profiling.interleaved({**phases, **rounds}, opts.repeats, opts.warmup)
  out = {key: _stats(t) for key, t in times.items()}
  for key, fn in rounds.items():  # SecAgg's masks and unmasking, from its own timers
    for phase, t in fn.phases.items():
      out[f"{key}.{phase}"] = _stats(t[opts.warmup :] or t)
  dp = out["dp_steps"]["median_s"]
  plain = out["plain_steps"]["median_s"]
  ratios = {}
  for key in rounds:
    t = out[key]
    ratios[key] = {
      "over_dp_steps": t["median_s"] / dp,
      "over_plain_steps": t["median_s"] / plain,
      "range_over_dp_steps": [t["min_s"] / dp, t["max_s"] / dp],
    }
  for mode in MODES:
    own = out[f"round_tff_{mode}"]["median_s"] - out[f"round_in_process_{mode}"]["median_s"]
    out[f"phase_tff_runtime_{mode}"] = {"median_s": own}
  server = sum(
    out[p]["median_s"] for p in ("phase_sum", "phase_decode_and_server_step") if p in out
  )
  print(
    f"  {model} {size}x{size} K={k} batch {batch}: plain {plain * 1e3:.0f} ms, DP {dp * 1e3:.0f} ms"
    f" (x{dp / plain:.2f}), dither partners {degree}",
    flush=True,
  )
  for key, r in ratios.items():
    print(
      f"    {key:26s} {out[key]['median_s'] * 1e3:8.0f} ms  / DP steps {r['over_dp_steps']:.2f}"
      f" ({r['range_over_dp_steps'][0]:.2f}-{r['range_over_dp_steps'][1]:.2f})"
      f"  / plain {r['over_plain_steps']:.2f}",
      flush=True,
    )
  case = {
    "model": model,
    "image_size": size,
    "hospitals": k,
    "examples_per_hospital": per_hospital,
    "sampling_prob": q,
    "batch": batch,
    "dither_partners": degree,
    "secagg_plus_neighbours": graphs_degree(k),
    "words": base.num_words,
    "times": out,
    "ratios": ratios,
    "server_s": server,
  }
  case["phase_table"] = phase_table(case)
  print(case["phase_table"], flush=True)
  return case


def graphs_degree(k: int) -> int | None:
  """SecAgg+'s mask-graph degree at K (the default malicious-server model)."""
  try:
    return configs.TrainConfig(secure_aggregation="secagg_plus").secagg_config(k).degree
  except ValueError:
    return None


def round_overhead(opts) -> dict:
  """The section (experiments/benchmark.py)."""
  cases = QUICK_CASES if opts.quick else CASES
  if not opts.squeezenet_224:
    cases = tuple(c for c in cases if c[1] != 224)
  out = {"cases": [_case(*c, opts) for c in cases]}
  by_k = {
    c["hospitals"]: c for c in out["cases"] if c["model"] == "squeezenet" and c["image_size"] == 64
  }
  if 10 in by_k and 100 in by_k:
    grow = by_k[100]["server_s"] / by_k[10]["server_s"]
    out["server_growth_k10_to_k100"] = grow
    out["k_log_k_growth"] = 100 * math.log(100) / (10 * math.log(10))
  return out


def phase_table(case: dict) -> str:
  """Markdown: each phase's median for the K hospitals, and its share of the DP steps."""
  t = case["times"]
  dp = t["dp_steps"]["median_s"]
  rows = [
    "| phase (K hospitals' worth) | ms | / K DP steps |",
    "|---|---|---|",
  ]
  for key, v in t.items():
    if key.startswith("phase_") or "." in key:
      rows.append(f"| {key} | {v['median_s'] * 1e3:.1f} | {v['median_s'] / dp:.3f} |")
  return "\n".join(rows)
