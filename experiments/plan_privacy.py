r"""Chooses q, rounds and sigma for your data size and target (epsilon, delta).

  python -m experiments.plan_privacy --num_examples=2931 --target_epsilon=10 \
      --expected_batch=100 --epochs=20,50,100 --num_hospitals=10

For each (expected batch, epochs) pair: the Poisson rate q = batch / N, the
DP-SGD steps T = ceil(epochs / q) (rounds of fscdp and cdp), the smallest
noise multiplier sigma whose T steps stay within the target (the same RDP
accountant the runs use, or PLD), and Dopamine's per-hospital share
sigma / sqrt(K). It prints the run_experiment flags of the first row.
More epochs or a smaller batch at the same epsilon need more noise per step;
on small data sets a larger expected batch usually trains better at the same
epsilon (the noise is averaged over more examples).
"""

from __future__ import annotations

import math
import sys

from absl import flags

from dopamine_tff import accounting
from experiments import cli_lib

_N = flags.DEFINE_integer("num_examples", None, "Training examples N over all hospitals.")
_EPS = flags.DEFINE_float("target_epsilon", None, "Target epsilon.")
_DELTA = flags.DEFINE_float("delta", None, "Target delta (default: 1 / (10 N), below 1/N).")
_BATCH = flags.DEFINE_list("expected_batch", ["50"], "Expected batch sizes q*N to tabulate.")
_EPOCHS = flags.DEFINE_list("epochs", ["20"], "Epochs (passes over N in expectation).")
_K = flags.DEFINE_integer("num_hospitals", 10, "K: Dopamine's per-hospital share is sigma/sqrt(K).")
_KIND = flags.DEFINE_enum("accountant", "rdp", ["rdp", "pld"], "Accountant to calibrate with.")


def main(argv):
  del argv
  try:
    if _N.value is None or _N.value < 1:
      raise ValueError("--num_examples must be given and >= 1")
    if _EPS.value is None or not _EPS.value > 0:
      raise ValueError("--target_epsilon must be given and > 0")
    if _K.value < 1:
      raise ValueError("--num_hospitals must be >= 1")
    delta = _DELTA.value if _DELTA.value is not None else 1.0 / (10 * _N.value)
    if not 0 < delta < 1:
      raise ValueError(f"--delta={delta} must be in (0, 1)")
    rows = [
      accounting.plan_dp_sgd(_N.value, _EPS.value, delta, float(b), float(e), _KIND.value)
      for b in _BATCH.value
      for e in _EPOCHS.value
    ]
  except ValueError as e:
    print(f"plan_privacy: error: {e}", file=sys.stderr)
    sys.exit(2)
  if delta >= 1.0 / _N.value:
    print(
      f"plan_privacy: warning: delta={delta:g} >= 1/N={1 / _N.value:.3g} allows releasing an "
      "example outright; choose delta well below 1/N",
      file=sys.stderr,
    )
  print(
    f"N={_N.value}, target ({_EPS.value:g}, {delta:g})-DP, {_KIND.value} accountant, K={_K.value}"
  )
  print(
    "| expected batch | epochs | q | steps (rounds) | sigma | per-hospital share sigma/sqrt(K) |"
  )
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['batch']:g} | {r['epochs']:g} | {r['q']:.5f} | {r['steps']} | {r['sigma']:.4f} | "
      f"{r['sigma'] / math.sqrt(_K.value):.4f} |"
    )
  first = rows[0]
  print(
    f"\nrun_experiment flags: --setting=fscdp --num_hospitals={_K.value} "
    f"--sampling_prob={first['q']:.6g} --rounds={first['steps']} "
    f"--noise_multiplier={first['sigma']:.4f} --delta={delta:g} --target_epsilon={_EPS.value:g}"
  )


if __name__ == "__main__":
  cli_lib.run(main, "plan_privacy")
