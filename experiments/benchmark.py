"""Benchmarks DP-SGD steps, TFF rounds, scaling and the secure sum, side by side.

  python -m experiments.benchmark --output=results/benchmark.json
  python -m experiments.benchmark --quick --output=/tmp/bench.json   # smoke

Every figure is the median of --repeats timed calls after --warmup untimed
ones, in one process on one machine, so ratios compare like with like. The
client steps of one configuration (plain SGD, our DP step, ...) are timed
round-robin, one call of each in turn, so a drift of the machine's speed hits
them alike. The JSON has the raw figures and a top-level "ratios" object.

Peak memory of a client step is measured exactly, in a child process whose
TensorFlow runs the BFC allocator on the CPU (TF_CPU_ALLOCATOR_USE_BFC=true),
which keeps allocation statistics: the peak bytes in use during one step minus
the bytes in use before it (inputs and weights excluded). Elsewhere memory is
the growth of this process's peak resident set size; resident memory of the
TFF worker is read from /proc.
"""

from __future__ import annotations

import json
import os
import platform
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import quantization
from dopamine_tff import runtime
from dopamine_tff.data import loaders
from experiments import bench_lib
from experiments import cli_lib
from experiments import client_steps_lib
from experiments import round_overhead_lib as round_overhead

_OUTPUT = flags.DEFINE_string(
  "output", "runs/benchmark.json", "Where the JSON goes (results/ holds the committed one)."
)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and one repeat (a smoke run).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed warm-up calls.")
_SQUEEZENET_224 = flags.DEFINE_bool("squeezenet_224", True, "Include SqueezeNet at 224x224.")
_XLA = flags.DEFINE_bool(
  "xla", True, "Also time plain and DP steps compiled with XLA (jit_compile) at 64x64."
)
_SECTIONS = flags.DEFINE_list(
  "sections",
  "scaling,rounds,workers,secure_sum,client_steps",
  "Which sections to run (ratios of sections left out are null).",
)
_BASELINE = flags.DEFINE_string(
  "baseline_revision",
  None,
  "Also time the DP step with dopamine_tff/fast_clip.py of this git revision, "
  "round-robin with the current one (rows ours_fast_<rev>, ratio fast_over_baseline).",
)
_MEMORY_PROBE = flags.DEFINE_string(
  "memory_probe", None, "Internal: model:size:batch; print the client steps' peak memory as JSON."
)


def _trainer(k, per_hospital, rt, size=16):
  data_cfg = loaders.DataConfig(
    dataset="synthetic",
    num_examples=int(k * per_hospital / 0.8) + 2,
    image_size=size,
    num_hospitals=k,
  )
  # Timing only, and the workers section compares weights across runs: the
  # seeded mode makes them comparable (no data here is private).
  return bench_lib.fscdp_trainer(data_cfg, runtime=rt, insecure_seeded_noise=True)


def rounds_tff_vs_in_process(opts: client_steps_lib.Options) -> dict:
  quick, repeats, warmup = opts.quick, opts.repeats, opts.warmup
  out = {}
  for rt in ("tff", "in_process"):
    trainer = _trainer(10, 30 if quick else 240, rt, size=16 if quick else 32)
    out[rt] = bench_lib.time_calls(bench_lib.round_step(trainer), repeats * 2, warmup)
    print(f"  FSCDP round K=10 {rt:10s} {out[rt]['median_s'] * 1e3:8.1f} ms", flush=True)
  return out


def scaling(opts: client_steps_lib.Options) -> dict:
  quick, repeats = opts.quick, opts.repeats
  out = {"hospitals": []}
  ks = (10, 100) if quick else (10, 100, 1000)
  for k in ks:
    trainer = _trainer(k, 10, "tff")
    r = bench_lib.time_calls(bench_lib.round_step(trainer), max(2, repeats // 2), 1)
    worker = runtime.worker_pids()
    r.update(
      k=k,
      examples=sum(trainer.sizes),
      python_rss_mb=bench_lib.rss_kb() / 1024,
      worker_rss_mb=bench_lib.rss_kb(worker[0]) / 1024 if worker else None,
    )
    out["hospitals"].append(r)
    print(
      f"  K={k:5d} round {r['median_s']:.3f} s, python RSS {r['python_rss_mb']:.0f} MB, worker RSS {r['worker_rss_mb']:.0f} MB",
      flush=True,
    )
  trainer = _trainer(10, 10, "tff")
  step = bench_lib.round_step(trainer)
  rounds = 10 if quick else 50
  rss = []
  for _ in range(rounds):
    step()
    worker = runtime.worker_pids()
    rss.append(bench_lib.rss_kb() / 1024 + (bench_lib.rss_kb(worker[0]) / 1024 if worker else 0))
  out["memory_over_rounds_mb"] = rss
  out["memory_growth_after_first_round"] = (rss[-1] - rss[0]) / rss[0]
  print(f"  memory over {rounds} rounds: {rss[0]:.0f} -> {rss[-1]:.0f} MB", flush=True)
  return out


def secure_sum_path(opts: client_steps_lib.Options) -> dict:
  quick, repeats, warmup = opts.quick, opts.repeats, opts.warmup
  n_params = 20_000 if quick else 725_061  # SqueezeNet 1.1 with a 5-class head
  k = 10
  rng = np.random.default_rng(0)
  updates = [[tf.constant(rng.normal(size=n_params).astype(np.float32))] for _ in range(k)]
  cfg = quantization.QuantizationConfig(60.0, max_summands=k)
  # Each hospital's zero-sum pairwise dither (k - 1 pair streams), its codes,
  # the sum mod 2**32 and the decoding: the whole encoded path.
  pair_keys = [
    np.array([[i * k + j, 7, 0, 0, 0, 0, 0, 0] for j in range(k) if j != i], np.uint32)
    for i in range(k)
  ]
  pair_signs = [
    np.array([1 if i < j else -1 for j in range(k) if j != i], np.int32) for i in range(k)
  ]
  encode_fn = tf.function(lambda v, r: quantization.encode(v, r, cfg))

  def encode(v, keys, signs):  # the dither on the host, as the hospitals make it
    return encode_fn(v, quantization.host_dither(keys, signs, n_params))

  decode = tf.function(lambda s: quantization.decode(s, tf.zeros([n_params], tf.float64), cfg))

  def secure():
    codes = [encode(u, pk, ps)[0] for u, pk, ps in zip(updates, pair_keys, pair_signs)]
    return decode(tf.math.floormod(tf.add_n(codes), quantization.MODULUS))

  def plain():
    return tf.add_n([u[0] for u in updates])

  out = {
    "secure": bench_lib.time_calls(secure, repeats, warmup),
    "plain": bench_lib.time_calls(plain, repeats, warmup),
    "params": n_params,
    "hospitals": k,
  }
  print(
    f"  secure sum {out['secure']['median_s'] * 1e3:.1f} ms vs float sum {out['plain']['median_s'] * 1e3:.1f} ms",
    flush=True,
  )
  return out


def workers(opts: client_steps_lib.Options) -> dict:
  """The same FSCDP rounds over 1 and 2 local TFF workers (mergeable form)."""
  quick, repeats, warmup = opts.quick, opts.repeats, opts.warmup
  out = {}
  weights = {}
  for n in (1, 2):
    runtime.start(runtime.RuntimeConfig(num_workers=n))
    trainer = _trainer(10, 30 if quick else 240, "tff", size=16 if quick else 32)
    step = bench_lib.round_step(trainer)
    out[f"workers_{n}"] = bench_lib.time_calls(step, repeats * 2, warmup)
    fresh = _trainer(10, 30 if quick else 240, "tff", size=16 if quick else 32)
    state = fresh.initial_state()
    for r in range(3):
      state = fresh.run(state, fresh.plan(r), r).state
    weights[n] = fresh.weights(state)
    print(
      f"  FSCDP round K=10 over {n} worker(s): {out[f'workers_{n}']['median_s'] * 1e3:.1f} ms",
      flush=True,
    )
  runtime.start()
  out["identical_weights_after_3_rounds"] = all(
    np.array_equal(a, b) for a, b in zip(weights[1], weights[2])
  )
  return out


def _ratio(steps, model, impl, base="plain_sgd", key="median_s"):
  """The worst (largest) impl/base ratio of `key` over a model's configurations."""
  vals = []
  for batch in sorted({s["batch"] for s in steps if s["model"] == model}):
    for size in sorted({s["image_size"] for s in steps if s["model"] == model}):
      pick = {
        s["impl"]: s[key]
        for s in steps
        if (s["model"], s["batch"], s["image_size"]) == (model, batch, size) and key in s
      }
      if impl in pick and base in pick:
        vals.append(pick[impl] / pick[base])
  return max(vals) if vals else None


def _worst(*values):
  present = [v for v in values if v is not None]
  return max(present) if present else None


# name -> (header, function, key in the JSON), run in this order: scaling
# (with the 50-round memory series) first, as later sections grow the process
# (TF Privacy at 224x224 alone takes ~20 GB), which would hide any growth
# behind an inflated base.
SECTIONS = {
  "scaling": ("scaling", scaling, "scaling"),
  "rounds": ("rounds", rounds_tff_vs_in_process, "rounds_k10"),
  "workers": ("workers", workers, "workers"),
  "secure_sum": ("secure sum", secure_sum_path, "secure_sum"),
  "client_steps": ("client steps", client_steps_lib.client_steps, "client_steps"),
  "round_overhead": ("round overhead", round_overhead.round_overhead, "round_overhead"),
}


def run_sections(names, opts: client_steps_lib.Options) -> dict:
  """JSON key -> the section's figures (None for sections not run)."""
  results = {key: None for _, _, key in SECTIONS.values()}
  results["client_steps"] = []
  runtime.start()
  try:
    for name, (header, fn, key) in SECTIONS.items():
      if name in names:
        print(f"{header}:", flush=True)
        results[key] = fn(opts)
  finally:
    runtime.shutdown()
  return results


def _over(section, a, b):
  """section[a] / section[b] of median times (None when the section was not run)."""
  return section[a]["median_s"] / section[b]["median_s"] if section else None


def ratios(results: dict, baseline: str | None) -> dict:
  """Every ratio docs/performance.md reports, from the sections' figures."""
  steps, scale = results["client_steps"], results["scaling"]
  both = ("small_cnn", "squeezenet")
  return {
    "dp_over_plain_small_cnn": _ratio(steps, "small_cnn", "ours_fast"),
    "dp_over_plain_squeezenet": _ratio(steps, "squeezenet", "ours_fast"),
    "dp_peak_memory_over_plain": _worst(
      *(_ratio(steps, m, "ours_fast", key="peak_memory_mb") for m in both)
    ),
    "xla_dp_over_graph_dp": _worst(
      *(_ratio(steps, m, "ours_fast_xla", base="ours_fast") for m in both)
    ),
    "xla_plain_over_graph_plain": _worst(
      *(_ratio(steps, m, "plain_sgd_xla", base="plain_sgd") for m in both)
    ),
    "fast_over_baseline": _worst(
      *(_ratio(steps, m, "ours_fast", base=f"ours_fast_{baseline}") for m in both if baseline)
    ),
    "vectorized_map_over_plain_squeezenet": _ratio(steps, "squeezenet", "ours_vectorized_map"),
    **{
      f"hardened_noise_over_dp_{m}": _ratio(steps, m, "ours_fast_hardened_noise", base="ours_fast")
      for m in both
    },
    "tf_privacy_over_ours": min(
      (
        r
        for r in (_ratio(steps, m, "tf_privacy_vectorized", base="ours_fast") for m in both)
        if r is not None
      ),
      default=None,
    ),
    "tff_over_in_process": _over(results["rounds_k10"], "tff", "in_process"),
    "memory_growth_50_rounds": scale["memory_growth_after_first_round"] if scale else None,
    "secure_over_plain_sum": _over(results["secure_sum"], "secure", "plain"),
    "two_workers_over_one": _over(results["workers"], "workers_2", "workers_1"),
    **{
      f"round_over_dp_steps_{rt}": _round_ratio(results["round_overhead"], rt)
      for rt in round_overhead.RUNTIMES
    },
  }


def _round_ratio(section, rt):
  """The worst FSCDP round / K DP steps of the K=10 cases, over the secure sums."""
  if not section:
    return None
  return _worst(
    *(
      c["ratios"][f"round_{rt}_{mode}"]["over_dp_steps"]
      for c in section["cases"]
      if c["hospitals"] <= 10
      for mode in round_overhead.MODES
    )
  )


def _machine() -> dict:
  return {
    "cpus": os.cpu_count(),
    "platform": platform.platform(),
    "python": sys.version.split()[0],
    "tensorflow": tf.__version__,
    "gpus": len(tf.config.list_physical_devices("GPU")),
  }


def main(argv):
  del argv
  if _MEMORY_PROBE.value:
    print(json.dumps(client_steps_lib.memory_probe(_MEMORY_PROBE.value)), flush=True)
    return
  quick = _QUICK.value
  opts = client_steps_lib.Options(
    quick=quick,
    repeats=1 if quick else _REPEATS.value,
    warmup=1 if quick else _WARMUP.value,
    squeezenet_224=_SQUEEZENET_224.value,
    xla=_XLA.value,
    baseline=_BASELINE.value,
  )
  unknown = set(_SECTIONS.value) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f"--sections: unknown {sorted(unknown)}")
  results = run_sections(set(_SECTIONS.value), opts)
  result = {
    "machine": _machine(),
    "quick": quick,
    "repeats": opts.repeats,
    **results,
    "ratios": ratios(results, opts.baseline),
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  with open(_OUTPUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
  cli_lib.run(main, "benchmark")
