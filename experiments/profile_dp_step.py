r"""Where the time of one DP-SGD step goes, against one plain SGD step.

  python -m experiments.profile_dp_step --model=squeezenet --image_size=64 --batch=100
  python -m experiments.profile_dp_step --model=small_cnn --image_size=64 --batch=32 \
      --output=results/profile/small_cnn_64_b32.md

Prints (and with --output writes as Markdown):
1. the median wall time of the plain and the DP step (timed round-robin) and
   their ratio;
2. per op type, the host milliseconds per step of each (TensorFlow profiler);
3. per trainable layer, the milliseconds of the plain step's weight gradient
   and of each of fast_clip's ways to the per-example norms and clipped sum
   (ghost, explicit, loop), with the one fast_clip.choose picks marked *.
"""

from __future__ import annotations

import os
import statistics

from absl import app
from absl import flags
import tensorflow as tf

from dopamine_tff import models
from dopamine_tff import profiling
from experiments import cli_lib

_MODEL = flags.DEFINE_enum("model", "small_cnn", ["small_cnn", "squeezenet"], "Model.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Square image side in pixels.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per step (median).")
_CALLS = flags.DEFINE_integer("profiled_calls", 3, "Calls under the profiler.")
_TOP = flags.DEFINE_integer("top_ops", 14, "Op types listed.")
_LAYERS = flags.DEFINE_bool("layers", True, "Time every clipping strategy per layer.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the report here (Markdown).")


def _layer_table(model, x, y) -> list[str]:
  """Per layer: the plain step's weight gradient against the DP step's ways."""
  lines = [
    "",
    "## Per layer: weight gradient of the plain step vs the DP step's ways (ms; * = chosen)",
    "",
    "| layer | T | p | d | plain dW | ghost | explicit | loop | grouped |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  totals = {"plain": 0.0, "chosen": 0.0}
  for row in profiling.layer_costs(model, x, y):
    cells = []
    for strategy in ("ghost", "explicit", "loop", "grouped"):
      ms = row.ms[strategy]
      mark = "*" if strategy == row.plan.strategy else ""
      cells.append("-" if ms is None else f"{ms:.1f}{mark}")
    totals["plain"] += row.plain_ms
    totals["chosen"] += row.ms[row.plan.strategy]
    lp = row.plan
    lines.append(
      f"| {lp.name} | {lp.positions} | {lp.fan_in} | {lp.fan_out} | {row.plain_ms:.1f} | "
      + " | ".join(cells)
      + " |"
    )
  lines.append(f"| total | | | | {totals['plain']:.1f} | chosen: {totals['chosen']:.1f} | | |")
  return lines


def report(
  model_name: str, size: int, batch: int, repeats: int, calls: int, top: int, layers: bool
):
  """The three tables as Markdown lines."""
  tf.keras.utils.set_random_seed(0)
  shape = (size, size, 3)
  x = tf.random.normal([batch, *shape])
  y = tf.random.uniform([batch], 0, 5, tf.int32)
  model = models.build(model_name, shape, 5)
  fns = profiling.step_fns(model, x, y, 1.0, 1.0, 0.01)
  plain, dp = fns["plain_sgd"], fns["ours_fast"]
  times = profiling.interleaved({"plain": plain, "dp": dp}, repeats, 2)
  p_ms, d_ms = (statistics.median(times[k]) * 1e3 for k in ("plain", "dp"))
  lines = [
    f"# DP step vs plain step: {model_name} {size}x{size}, batch {batch}",
    "",
    f"Median of {repeats} round-robin calls: plain {p_ms:.1f} ms, DP {d_ms:.1f} ms, "
    f"ratio {d_ms / p_ms:.2f}.",
    "",
    "## Host time per op type (ms per step, TensorFlow profiler)",
    "",
    "| op type | plain | DP |",
    "|---|---|---|",
  ]
  ops_plain, ops_dp = profiling.op_times(plain, calls), profiling.op_times(dp, calls)
  ranked = sorted(
    set(ops_plain) | set(ops_dp), key=lambda k: -max(ops_plain.get(k, 0), ops_dp.get(k, 0))
  )
  for op in ranked[:top]:
    lines.append(f"| {op} | {ops_plain.get(op, 0):.1f} | {ops_dp.get(op, 0):.1f} |")
  lines.append(
    f"| all ops (threads add up) | {sum(ops_plain.values()):.1f} | {sum(ops_dp.values()):.1f} |"
  )
  if layers:
    lines += _layer_table(model, x, y)
  return lines


def main(argv):
  del argv
  for name, value in (("image_size", _SIZE.value), ("batch", _BATCH.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {value}")
  lines = report(
    _MODEL.value,
    _SIZE.value,
    _BATCH.value,
    _REPEATS.value,
    _CALLS.value,
    _TOP.value,
    _LAYERS.value,
  )
  text = "\n".join(lines) + "\n"
  print(text, flush=True)
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  cli_lib.run(main, "profile_dp_step")
