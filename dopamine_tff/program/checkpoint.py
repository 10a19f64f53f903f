"""Checkpoints of a run: program state, privacy ledgers and round number.

A checkpoint is one directory ``ckpt_<round>`` holding ``arrays.npz`` (the
trainer's state as named lists of arrays) and ``meta.json`` (round, ledgers,
a fingerprint of the hyper-parameters, and the SHA-256 of ``arrays.npz``).
It is written under a temporary name, its files and directory fsync'd, then
renamed and the parent fsync'd: a run killed (or a machine losing power)
while writing leaves the previous checkpoints intact, and a renamed one is on
the disk. Reading verifies the digest and that every array is finite; a
damaged newest checkpoint falls back to the newest intact one.

No secret randomness is checkpointed: a resumed run draws fresh keys (only
the labelled insecure seeded mode keys its randomness by (seed, round,
hospital), and so replays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import zipfile

import numpy as np

from dopamine_tff.program import durable

_NAME = re.compile(r"^ckpt_(\d{8})$")
KEEP = 3  # the newest and two to fall back to


class Damaged(ValueError):
  """A checkpoint that cannot be trusted; the message says why."""


def _fsync(path: str) -> None:
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def save(directory: str, round_num: int, arrays: dict, meta: dict, keep: int = KEEP) -> str:
  """Writes checkpoint `round_num` atomically and durably; keeps the newest `keep`.

  Raises:
    durable.WriteFailed: the disk is full or failing (nothing half-written is left).
  """
  final = os.path.join(directory, f"ckpt_{round_num:08d}")
  tmp = final + ".tmp"
  with durable.writing(final, "checkpoint", cleanup=tmp):
    os.makedirs(directory, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    flat = {
      f"{key}__{i:05d}": np.asarray(a) for key, lst in arrays.items() for i, a in enumerate(lst)
    }
    npz = os.path.join(tmp, "arrays.npz")
    np.savez(npz, **flat)
    _fsync(npz)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(dict(meta, round=round_num, arrays_sha256=_sha256(npz)), f, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    durable.fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    durable.fsync_dir(directory)
  for old in rounds(directory)[:-keep]:
    shutil.rmtree(os.path.join(directory, f"ckpt_{old:08d}"), ignore_errors=True)
  return final


def rounds(directory: str) -> list[int]:
  """Rounds of the complete checkpoints in `directory`, oldest first."""
  if not os.path.isdir(directory):
    return []
  found = [int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m]
  return sorted(found)


def read_meta(path: str) -> dict:
  """A checkpoint's meta.json (Damaged if missing, unreadable or incomplete)."""
  try:
    with open(os.path.join(path, "meta.json")) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise Damaged("meta.json is missing") from None
  except (OSError, ValueError) as e:
    raise Damaged(f"meta.json is unreadable ({e})") from None
  missing = [
    k for k in ("round", "ledgers", "fingerprint") if not isinstance(meta, dict) or k not in meta
  ]
  if missing:
    raise Damaged(f"meta.json lacks {', '.join(missing)}")
  return meta


def read(path: str) -> tuple[dict, dict]:
  """(arrays, meta) of the checkpoint at `path`, verified (Damaged otherwise)."""
  meta = read_meta(path)
  npz = os.path.join(path, "arrays.npz")
  if not os.path.isfile(npz):
    raise Damaged("arrays.npz is missing")
  want = meta.get("arrays_sha256")
  if want is not None and _sha256(npz) != want:
    raise Damaged("arrays.npz does not match the SHA-256 its meta.json recorded")
  arrays: dict[str, list] = {}
  try:
    with np.load(npz) as z:
      for name in sorted(z.files):
        key, _ = name.rsplit("__", 1)
        arrays.setdefault(key, []).append(z[name])
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise Damaged(f"arrays.npz is unreadable ({type(e).__name__}: {e})") from None
  for key, values in arrays.items():
    for a in values:
      if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise Damaged(f"arrays.npz holds non-finite values in {key}")
  return arrays, meta


@dataclasses.dataclass(frozen=True)
class Found:
  """What a resume starts from.

  Attributes:
    arrays, meta: the newest intact checkpoint.
    damaged: one line per newer checkpoint that could not be used.
    newest_ledgers: the ledgers of the newest checkpoint whose meta.json is
      readable, when it is newer than the one restored: the rounds it
      charged were run, so the resumed run keeps charging them (never less).
    newest_round: that checkpoint's round.
  """

  arrays: dict
  meta: dict
  damaged: tuple = ()
  newest_ledgers: dict | None = None
  newest_round: int | None = None


def load_latest(directory: str) -> Found | None:
  """The newest intact checkpoint, after any damaged newer ones; None if there
  is none at all.

  Raises:
    Damaged: checkpoints exist but none is intact (the message lists why).
  """
  found = rounds(directory)
  damaged, newest = [], None
  for r in reversed(found):
    path = os.path.join(directory, f"ckpt_{r:08d}")
    try:
      if newest is None:
        with contextlib.suppress(Damaged):
          newest = read_meta(path)
      arrays, meta = read(path)
    except Damaged as e:
      damaged.append(f"checkpoint {path}: {e}")
      continue
    later = newest if newest is not None and newest["round"] > meta["round"] else None
    return Found(
      arrays,
      meta,
      tuple(damaged),
      later["ledgers"] if later else None,
      later["round"] if later else None,
    )
  if damaged:
    raise Damaged("no intact checkpoint to resume from: " + "; ".join(damaged))
  return None
