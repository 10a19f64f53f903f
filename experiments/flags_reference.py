"""Writes docs/flags.md: every flag of every binary, from the binaries' own --helpfull.

  python -m experiments.flags_reference            # rewrites docs/flags.md
  python -m experiments.flags_reference --check    # exit 1 when docs/flags.md is stale

Each binary runs once in a child process (its flags are registered at import,
and two binaries may define the same name); only the flags of our own modules
are kept, not absl's or TensorFlow's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "flags.md")
BINARIES = (
  "run_experiment",
  "reproduce_paper",
  "tune",
  "plan_privacy",
  "pretrain_public",
  "summarize",
  "plot_results",
  "convert_squeezenet",
  "tff_worker",
  "benchmark",
  "secagg_benchmark",
  "workers_benchmark",
  "trainable_benchmark",
  "profile_dp_step",
)
_OURS = re.compile(r"^(\S*/)?(experiments|dopamine_tff)[./]\S*:$")


def helpfull(binary: str) -> str:
  proc = subprocess.run(
    [sys.executable, "-m", f"experiments.{binary}", "--helpfull"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  return proc.stdout


def own_flags(text: str) -> list[str]:
  """The lines of the sections headed by one of our modules."""
  out, keep = [], False
  for line in text.splitlines():
    if line and not line.startswith(" "):
      keep = bool(_OURS.match(line))
      continue
    if keep:
      out.append(line.rstrip())
  return out


def render() -> str:
  parts = [
    "# Flags\n",
    "This page answers: which flags each binary takes, with its help text and default.",
    "It is generated: `python -m experiments.flags_reference` rewrites it, and",
    "`tests/docs_test.py` fails when it no longer matches the binaries.\n",
  ]
  for binary in BINARIES:
    lines = own_flags(helpfull(binary))
    parts.append(f"## `python -m experiments.{binary}`\n")
    parts.append("```\n" + ("\n".join(lines) if lines else "(no flags of its own)") + "\n```\n")
  return "\n".join(parts)


def main(argv) -> int:
  text = render()
  if "--check" in argv:
    with open(OUTPUT) as f:
      if f.read() != text:
        print(f"{OUTPUT} is stale: run python -m experiments.flags_reference", file=sys.stderr)
        return 1
    return 0
  with open(OUTPUT, "w") as f:
    f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
