"""What freezing layers saves in a DP step (--trainable, issue 19).

python -m experiments.trainable_benchmark --output=results/benchmark_trainable.json

For each model, one hospital's DP-SGD step (dp_sgd.noisy_clipped_sum: per-example
clipping on the fast path, the noise share, the weight update) is timed with
every layer training (``all``), from a middle layer on, and the head only. The
steps of one model are timed round-robin in one process (profiling.interleaved),
so a drift of the machine's speed hits them alike; each row gives the median,
the range and the ratio to ``all``'s median. The batch is fixed (q = 1) so the
three steps do the same examples.
"""

from __future__ import annotations

import json
import os
import platform
import statistics

from absl import flags
import tensorflow as tf

from dopamine_tff import dp_sgd
from dopamine_tff import models
from dopamine_tff import profiling
from experiments import cli_lib

_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON (default: print only).")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed calls of each step.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls of each step first.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke sizes (for the tests): 1 call, small inputs.")

# model, image side, batch (one hospital's expected Poisson batch in the cpu and
# paper presets is 24 to 30 images), the middle layer.
CASES = (("small_cnn", 32, 32, "from:conv2"), ("squeezenet", 64, 32, "from:fire9_squeeze"))
QUICK_CASES = (("small_cnn", 16, 8, "from:conv2"),)


def _step(name, size, batch, spec):
  """A tf.function running one DP step of a model built with `spec` frozen."""
  tf.keras.utils.set_random_seed(0)
  shape = (size, size, 3)
  model = models.build(name, shape, 5, spec)
  x = tf.random.normal([batch, *shape])
  y = tf.random.uniform([batch], 0, 5, tf.int32)
  seed = tf.constant([1, 2], tf.int64)
  variables = models.variables(model)

  @tf.function
  def step():
    out = dp_sgd.noisy_clipped_sum(
      model, x, y, sampling_prob=1.0, l2_norm_clip=1.0, noise_stddev=1.0, seed=seed
    )
    for v, g in zip(variables, out.noisy_sum):
      v.assign_sub(0.01 * g / batch)

  return step, models.count_params(model)


def case(name, size, batch, middle, repeats, warmup) -> list[dict]:
  """The rows of one model: all, middle and head, timed round-robin."""
  fns, params = {}, {}
  for spec in ("all", middle, "head"):
    fns[spec], params[spec] = _step(name, size, batch, spec)
  times = profiling.interleaved(fns, repeats, warmup)
  base = statistics.median(times["all"])
  rows = []
  for spec, t in times.items():
    med = statistics.median(t)
    rows.append(
      {
        "model": name,
        "image_size": size,
        "batch": batch,
        "trainable": spec,
        "trainable_parameters": params[spec],
        "median_ms": 1000 * med,
        "min_ms": 1000 * min(t),
        "max_ms": 1000 * max(t),
        "calls": len(t),
        "over_all": med / base,
      }
    )
    print(
      f"  {name} {size}px b{batch} {spec:>20}: {1000 * med:8.1f} ms "
      f"[{1000 * min(t):.1f}, {1000 * max(t):.1f}] x{len(t)}  {params[spec]:>8} params  "
      f"{med / base:.3f} of all",
      flush=True,
    )
  return rows


def main(argv):
  del argv
  quick = _QUICK.value
  rows = []
  for name, size, batch, middle in QUICK_CASES if quick else CASES:
    rows += case(
      name, size, batch, middle, 1 if quick else _REPEATS.value, 1 if quick else _WARMUP.value
    )
  out = {
    "command": "python -m experiments.trainable_benchmark"
    + (f" --output={_OUTPUT.value}" if _OUTPUT.value else "")
    + (" --quick" if quick else ""),
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "rows": rows,
    "ratios": {
      f"{r['trainable'].split(':')[0]}_over_all_{r['model']}": r["over_all"]
      for r in rows
      if r["trainable"] != "all"
    },
  }
  print(json.dumps(out["ratios"], indent=1))
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  cli_lib.run(main, "trainable_benchmark")
