"""The benchmark's client-step section: plain SGD, our DP steps and TF Privacy's.

The client steps of one configuration are timed round-robin, one call of each
in turn (profiling.interleaved), so a drift of the machine's speed hits them
alike. Peak memory is measured exactly in a child process whose TensorFlow
runs the BFC allocator (``python -m experiments.benchmark --memory_probe``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import tensorflow as tf

from dopamine_tff import models
from dopamine_tff import profiling
from experiments import bench_lib


@dataclasses.dataclass(frozen=True)
class Options:
  """How hard every section works (from the flags, read in main only)."""

  quick: bool = False
  repeats: int = 5
  warmup: int = 2
  squeezenet_224: bool = True
  xla: bool = True
  baseline: str | None = None


def case_inputs(name, size, batch):
  tf.keras.utils.set_random_seed(0)
  shape = (size, size, 3)
  x = tf.random.normal([batch, *shape])
  y = tf.random.uniform([batch], 0, 5, tf.int32)
  return shape, x, y


def memory_probe(spec: str) -> dict[str, float]:
  """Peak MiB in use during one plain and one DP step (run under the BFC allocator)."""
  name, size, batch = spec.split(":")
  shape, x, y = case_inputs(name, int(size), int(batch))
  fns = profiling.step_fns(models.build(name, shape, 5), x, y, 1.0, 1.0, 0.01)
  out = {}
  for impl in ("plain_sgd", "ours_fast"):
    fns[impl]()  # trace and run once
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fns[impl]()
    out[impl] = (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20
  return out


def peak_memory(name, size, batch) -> dict[str, float] | None:
  """memory_probe in a child process with the BFC allocator, or None if it failed."""
  env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.benchmark", f"--memory_probe={name}:{size}:{batch}"],
    capture_output=True,
    text=True,
    env=env,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    print(f"  memory probe {name} {size}px b{batch} failed: {proc.stderr[-300:]}", flush=True)
    return None
  return json.loads(lines[-1])


def _tfp_fn(name, shape, classes, x, y, clip, sigma, lr, vectorized):
  from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras
  from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras_vectorized

  model = models.build(name, shape, classes)
  cls = (
    dp_optimizer_keras_vectorized.VectorizedDPKerasSGDOptimizer
    if vectorized
    else dp_optimizer_keras.DPKerasSGDOptimizer
  )
  opt = cls(l2_norm_clip=clip, noise_multiplier=sigma, num_microbatches=None, learning_rate=lr)
  loss = tf.keras.losses.SparseCategoricalCrossentropy(
    from_logits=True, reduction=tf.losses.Reduction.NONE
  )
  model.compile(optimizer=opt, loss=loss)
  return lambda: model.train_on_batch(x, y)


def client_steps(opts: Options) -> list[dict]:
  """Plain SGD, our DP steps and TF Privacy's, per model, size and batch."""
  cases = [
    ("small_cnn", 64, 32),
    ("small_cnn", 64, 100),
    ("squeezenet", 64, 32),
    ("squeezenet", 64, 100),
  ]
  if opts.squeezenet_224 and not opts.quick:
    cases += [("squeezenet", 224, 32), ("squeezenet", 224, 100)]
  if opts.quick:
    cases = [("small_cnn", 16, 8), ("squeezenet", 32, 8)]
  baselines = {}
  if opts.baseline:
    baselines[opts.baseline] = profiling.fast_clip_at(opts.baseline)
  out = []
  for name, size, batch in cases:
    out += _client_step_case(name, size, batch, opts, baselines)
  return out


def _tf_privacy_fns(name, shape, size, batch, x, y, quick) -> tuple[dict, list[dict]]:
  """TF Privacy's steps that fit this machine, and rows for those that do not."""
  slow, skipped = {}, []
  if size * size * batch <= 224 * 224 * 32:
    slow["tf_privacy_vectorized"] = _tfp_fn(name, shape, 5, x, y, 1.0, 1.0, 0.01, True)
  else:
    # Seen here: it asked for > 24 GiB and the kernel's OOM killer ended the run.
    skipped.append(
      dict(
        model=name,
        image_size=size,
        batch=batch,
        impl="tf_privacy_vectorized",
        error="skipped: needs more than 24 GiB (OOM-killed when tried)",
      )
    )
  if name == "small_cnn" or quick:
    slow["tf_privacy_microbatch_loop"] = _tfp_fn(name, shape, 5, x, y, 1.0, 1.0, 0.01, False)
  return slow, skipped


def _client_step_case(name, size, batch, opts, baselines) -> list[dict]:
  """The rows of one (model, image size, batch): every implementation timed."""
  shape, x, y = case_inputs(name, size, batch)
  fns = profiling.step_fns(
    models.build(name, shape, 5), x, y, 1.0, 1.0, 0.01, baselines=baselines, hardened_noise=True
  )
  results = bench_lib.interleaved(fns, opts.repeats, opts.warmup)
  if opts.xla and size <= 64:
    xla = profiling.step_fns(models.build(name, shape, 5), x, y, 1.0, 1.0, 0.01, jit_compile=True)
    results.update(bench_lib.interleaved(xla, opts.repeats, opts.warmup))
  memory = {} if opts.quick and name != "small_cnn" else (peak_memory(name, size, batch) or {})
  slow, out = _tf_privacy_fns(name, shape, size, batch, x, y, opts.quick)
  for impl, fn in slow.items():
    try:
      # 40-80 s a call here: 3 calls (1 at 224x224) bound the run's length.
      results[impl] = bench_lib.time_calls(fn, 1 if size == 224 else min(opts.repeats, 3), 1)
    except (tf.errors.ResourceExhaustedError, tf.errors.InternalError) as e:
      # Seen: TF Privacy's vectorized optimizer at 224x224, batch 100, needs > 20 GB.
      first = str(e).splitlines()[0][:200]
      print(f"  {name:10s} {size:3d}px b{batch:<3d} {impl:28s} failed: {first}", flush=True)
      out.append(dict(model=name, image_size=size, batch=batch, impl=impl, error=first))
  for impl, r in results.items():
    r.update(
      model=name, image_size=size, batch=batch, impl=impl, examples_per_s=batch / r["median_s"]
    )
    if impl in memory:
      r["peak_memory_mb"] = memory[impl]
    out.append(r)
    mem = f"  peak {memory[impl]:8.1f} MiB" if impl in memory else ""
    print(
      f"  {name:10s} {size:3d}px b{batch:<3d} {impl:28s} {r['median_s'] * 1e3:9.1f} ms  "
      f"{r['examples_per_s']:8.1f} ex/s{mem}",
      flush=True,
    )
  return out
