"""Device configuration for the in-process runtime (GPU placement is configured,
never assumed). Must run before TensorFlow touches a device."""

from __future__ import annotations

import tensorflow as tf


def parse_gpus(spec: str | None) -> list[int] | None:
  """'' or None: all GPUs; 'none': no GPU; '0,2': those indices.

  Raises:
    ValueError: for a malformed list.
  """
  if spec is None or spec == "":
    return None
  if spec.lower() == "none":
    return []
  try:
    ids = [int(p) for p in spec.split(",")]
  except ValueError:
    raise ValueError(
      f"gpus must be 'none' or a comma-separated list of indices, got {spec!r}"
    ) from None
  if any(i < 0 for i in ids):
    raise ValueError(f"gpu indices must be >= 0, got {spec!r}")
  return ids


def configure(gpus: list[int] | None, memory_growth: bool = True) -> list[str]:
  """Makes only `gpus` visible (None: all) and sets memory growth on them.

  Returns:
    names of the visible GPUs (empty on a CPU-only host).

  Raises:
    ValueError: when asked for a GPU index this host does not have.
  """
  physical = tf.config.list_physical_devices("GPU")
  if gpus is not None:
    missing = [i for i in gpus if i >= len(physical)]
    if missing:
      raise ValueError(f"GPU(s) {missing} requested but this host has {len(physical)} GPU(s)")
    chosen = [physical[i] for i in gpus]
    tf.config.set_visible_devices(chosen, "GPU")
  else:
    chosen = physical
  for gpu in chosen:
    tf.config.experimental.set_memory_growth(gpu, memory_growth)
  return [g.name for g in chosen]
