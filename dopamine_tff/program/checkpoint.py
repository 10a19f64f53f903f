"""Checkpoints of a run: program state, privacy ledgers and round number.

A checkpoint is one directory ``ckpt_<round>`` holding ``arrays.npz`` (the
trainer's state as named lists of arrays) and ``meta.json`` (round, ledgers,
a fingerprint of the hyper-parameters). It is written to a temporary name and
renamed, so a run killed while writing leaves the previous checkpoint intact.
All randomness of the TFF trainers is stateless, keyed by (seed, round,
hospital), so the round number is the whole random state.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

_NAME = re.compile(r"^ckpt_(\d{8})$")


def save(directory: str, round_num: int, arrays: dict, meta: dict, keep: int = 2) -> str:
  """Writes checkpoint `round_num` atomically; keeps the newest `keep`."""
  os.makedirs(directory, exist_ok=True)
  final = os.path.join(directory, f"ckpt_{round_num:08d}")
  tmp = final + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  flat = {
    f"{key}__{i:05d}": np.asarray(a) for key, lst in arrays.items() for i, a in enumerate(lst)
  }
  np.savez(os.path.join(tmp, "arrays.npz"), **flat)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(dict(meta, round=round_num), f, sort_keys=True)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  for old in rounds(directory)[:-keep]:
    shutil.rmtree(os.path.join(directory, f"ckpt_{old:08d}"), ignore_errors=True)
  return final


def rounds(directory: str) -> list[int]:
  """Rounds of the complete checkpoints in `directory`, oldest first."""
  if not os.path.isdir(directory):
    return []
  found = [int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m]
  return sorted(found)


def load_latest(directory: str) -> tuple[dict, dict] | None:
  """(arrays, meta) of the newest checkpoint, or None when there is none."""
  found = rounds(directory)
  if not found:
    return None
  path = os.path.join(directory, f"ckpt_{found[-1]:08d}")
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  arrays: dict[str, list] = {}
  with np.load(os.path.join(path, "arrays.npz")) as z:
    for name in sorted(z.files):
      key, _ = name.rsplit("__", 1)
      arrays.setdefault(key, []).append(z[name])
  return arrays, meta
