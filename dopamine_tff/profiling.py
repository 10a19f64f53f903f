"""Where a DP step's time goes: per-op-type totals and per-layer clipping costs.

* ``op_times`` runs a function under the TensorFlow profiler and sums the host
  time of each op type (from the trace's XPlane), per call.
* ``layer_costs`` times, for every trainable layer of a model, the plain step's
  weight-gradient op and each of fast_clip's ways to get per-example norms and
  the clipped sum (ghost, explicit, loop), on the layer's real inputs and output
  gradients; it is what fast_clip.choose's constants were calibrated on.

Used by experiments/profile_dp_step.py.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from dopamine_tff import dp_sgd
from dopamine_tff import fast_clip


def step_fns(
  model, x, y, clip, noise_std, lr, jit_compile=False, baselines=None, hardened_noise=False
) -> dict:
  """One SGD step on (x, y) as tf.functions: plain, our DP step, the vectorized_map DP step.

  The DP steps clip to ``clip``, add Gaussian noise of std ``noise_std`` to the
  sum (SeededGaussianSumQuery, as the client step does) and divide by the
  batch. With ``jit_compile`` only plain and fast, named *_xla, compiled by XLA.
  ``baselines`` maps a name to another fast_clip module (e.g. an earlier
  revision's, see fast_clip_at): each adds a DP step "ours_fast_<name>".
  ``hardened_noise`` adds "ours_fast_hardened_noise": the same step with the
  noise drawn as 4 float64 Gaussians per coordinate (--hardened_noise).
  """
  seed = tf.constant([1, 2], tf.int64)
  variables = model.trainable_variables

  @tf.function(jit_compile=jit_compile)
  def plain():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(dp_sgd.loss_per_example(model(x), y))
    for v, g in zip(variables, tape.gradient(loss, variables)):
      v.assign_sub(lr * g)

  def dp_with(summer, draws=1):
    @tf.function(jit_compile=jit_compile)
    def step():
      summed = summer()
      query = dp_sgd.SeededGaussianSumQuery(clip, noise_std, seed, draws)
      noised, _, _ = query.get_noised_result(summed, query.initial_global_state())
      for v, g in zip(variables, noised):
        v.assign_sub(lr * g / x.shape[0])

    return step

  def fast_sum():
    return fast_clip.clipped_sum(model, x, y, clip, dp_sgd.loss_per_example)[0]

  fast = dp_with(fast_sum)

  def vectorized_sum():
    grads = dp_sgd.per_example_gradients(model, x, y)
    clipped, _ = dp_sgd.clip_per_example(grads, clip)
    return [tf.reduce_sum(g, 0) for g in clipped]

  if jit_compile:
    return {"plain_sgd_xla": plain, "ours_fast_xla": fast}
  out = {"plain_sgd": plain, "ours_fast": fast, "ours_vectorized_map": dp_with(vectorized_sum)}
  if hardened_noise:
    out["ours_fast_hardened_noise"] = dp_with(fast_sum, draws=4)
  for name, module in (baselines or {}).items():
    out[f"ours_fast_{name}"] = dp_with(
      lambda module=module: module.clipped_sum(model, x, y, clip, dp_sgd.loss_per_example)[0]
    )
  return out


def fast_clip_at(revision: str, repo: str | None = None):
  """dopamine_tff/fast_clip.py as it was at a git revision, loaded as a module.

  For side-by-side timing of the current DP step against an earlier one in the
  same process (experiments/benchmark.py --baseline_revision).

  Raises:
    ValueError: if git cannot show the file at that revision.
  """
  repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    ["git", "-C", repo, "show", f"{revision}:dopamine_tff/fast_clip.py"],
    capture_output=True,
    text=True,
  )
  if proc.returncode != 0:
    raise ValueError(
      f"no dopamine_tff/fast_clip.py at revision {revision!r}: {proc.stderr.strip()}"
    )
  module = types.ModuleType(f"fast_clip_at_{revision}")
  module.__file__ = os.path.join(tempfile.mkdtemp(prefix="fast_clip_"), "fast_clip.py")
  with open(module.__file__, "w") as f:  # autograph reads a function's source from its file
    f.write(proc.stdout)
  sys.modules[module.__name__] = module  # dataclasses look their module up there
  exec(compile(proc.stdout, module.__file__, "exec"), module.__dict__)  # noqa: S102
  return module


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
  """Seconds of each call of several functions called round-robin (one call of each in turn).

  A drift of the machine's speed then hits them alike; one function is a plain
  median timing.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return times


def median_seconds(fn, repeats: int, warmup: int) -> float:
  """Median seconds of ``repeats`` calls after ``warmup`` untimed ones."""
  return statistics.median(interleaved({"fn": fn}, repeats, warmup)["fn"])


_NOT_OPS = frozenset({"Run", "Process"})


def op_times(fn, calls: int = 5, logdir: str | None = None) -> dict[str, float]:
  """Milliseconds per call spent in each TensorFlow op type while ``fn`` runs.

  ``fn`` should be warm (traced). Ops running in parallel on several threads
  each count their own time, so the total can exceed the wall time.
  """
  logdir = logdir or tempfile.mkdtemp(prefix="dopamine_profile_")
  tf.profiler.experimental.start(logdir)
  try:
    for _ in range(calls):
      fn()
  finally:
    tf.profiler.experimental.stop()
  paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    raise RuntimeError(f"the profiler wrote no trace under {logdir}")
  space = xplane_pb2.XSpace()
  with open(paths[-1], "rb") as f:
    space.ParseFromString(f.read())
  totals: collections.Counter = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        # Op events are named "<op name>:<op type>"; executor scopes ("...:Run",
        # "...:Process") and whole-function events are not ops.
        if ":" not in name:
          continue
        op_type = name.rsplit(":", 1)[1].strip()
        if op_type in _NOT_OPS or op_type.startswith("__inference") or not op_type:
          continue
        totals[op_type] += event.duration_ps / 1e9 / calls
  return dict(totals.most_common())


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Milliseconds for one layer: the plain weight gradient and each clipping way."""

  plan: fast_clip.LayerPlan
  plain_ms: float
  ms: dict  # strategy -> ms for norms plus clipped sum; None where not applicable


def layer_costs(model, x, y, *, repeats: int = 5, warmup: int = 2, max_gram_positions=1024):
  """Per-layer times of fast_clip's strategies on the model's real activations.

  Ghost is not timed where T > ``max_gram_positions`` (its B x T x T Grams would
  take seconds and gigabytes); loop only for convolutions it applies to.
  """
  tap = fast_clip._tap_model(model)  # noqa: SLF001 (the same taps the DP step uses)
  with tf.GradientTape() as tape:
    inputs, outputs, logits = tap(x, training=False)
    logits = logits[0] if isinstance(logits, list | tuple) else logits
    loss = tf.reduce_sum(dp_sgd.loss_per_example(logits, y))
  grads = tape.gradient(loss, outputs)
  factor = tf.random.uniform([x.shape[0]])
  rows = []
  for layer, lp, xi, gi in zip(fast_clip._taps(model), fast_clip.plan(model), inputs, grads):  # noqa: SLF001

    def strategy_fn(strategy, layer=layer, xi=xi, gi=gi):
      @tf.function
      def run():
        sq, weighted = fast_clip._layer_terms(layer, strategy, xi, gi)  # noqa: SLF001
        return sq, weighted(factor)

      return run

    @tf.function
    def plain(layer=layer, xi=xi, gi=gi):
      # The plain step's weight gradient: what the DP step replaces.
      return fast_clip._weighted_backward(layer, xi, gi, tf.ones([xi.shape[0]]))  # noqa: SLF001

    ms = {}
    for strategy in (fast_clip.GHOST, fast_clip.EXPLICIT, fast_clip.LOOP, fast_clip.GROUPED):
      applies = {
        fast_clip.GHOST: lp.positions <= max_gram_positions,
        fast_clip.EXPLICIT: True,
        fast_clip.LOOP: fast_clip._loopable(layer),  # noqa: SLF001
        fast_clip.GROUPED: isinstance(layer, tf.keras.layers.Conv2D),
      }[strategy]
      ms[strategy] = (
        1e3 * median_seconds(strategy_fn(strategy), repeats, warmup) if applies else None
      )
    rows.append(LayerCost(lp, 1e3 * median_seconds(plain, repeats, warmup), ms))
  return rows
