"""Hospital arrays <-> the TFRecord shard files the TFF worker reads.

TFF then ships only a path per hospital and round; the worker reads the file.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dopamine_tff.data import loaders
from dopamine_tff.program import durable


def patient_ids(s: loaders.ImageSet) -> np.ndarray:
  """Dense patient ids 0..P-1 of a hospital's examples (ValueError when the data has none)."""
  if s.patients is None:
    raise ValueError(
      "privacy_unit=patient needs patient ids: EyePACS file names, or a patient_id column "
      "in the APTOS-format train.csv (synthetic, digits and plain APTOS have none)"
    )
  return np.unique(s.patients, return_inverse=True)[1].astype(np.int32)


def write_shards(
  sets: list[loaders.ImageSet], directory: str, with_groups: bool = False
) -> list[str]:
  """Writes each hospital's arrays to one file; returns the paths.

  With ``with_groups`` a third record holds the dense patient id per example.
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  for k, s in enumerate(sets):
    path = os.path.join(directory, f"hospital_{k:04d}.tfrec")
    records = [s.images, s.labels] + ([patient_ids(s)] if with_groups else [])
    tmp = path + ".tmp"
    try:
      with tf.io.TFRecordWriter(tmp) as w:
        for array in records:
          w.write(tf.io.serialize_tensor(tf.constant(array)).numpy())
    except tf.errors.OpError as e:  # TF reports a full disk as its own error
      if os.path.exists(tmp):
        os.remove(tmp)
      raise durable.WriteFailed(
        f"cannot write the training-data shard {path}: {e.message}; free space (or fix "
        "the disk) and start again"
      ) from None
    os.replace(tmp, path)
    paths.append(path)
  return paths


def hospital_dataset(path: str, image_shape, with_groups: bool = False) -> tf.data.Dataset:
  """One element: the hospital's (images [N,H,W,C], labels [N][, patient ids [N]])."""

  def parse(records):
    x = tf.io.parse_tensor(records[0], tf.float32)
    y = tf.io.parse_tensor(records[1], tf.int32)
    out = (tf.ensure_shape(x, [None, *image_shape]), tf.ensure_shape(y, [None]))
    if with_groups:
      out = (*out, tf.ensure_shape(tf.io.parse_tensor(records[2], tf.int32), [None]))
    return out

  return tf.data.TFRecordDataset(path).batch(3 if with_groups else 2).map(parse)


def inline_dataset(s: loaders.ImageSet, image_shape, with_groups: bool = False) -> tf.data.Dataset:
  """The element of `hospital_dataset`, from the arrays themselves: TFF then
  serializes the data into each round's request (for workers that cannot read
  this host's files). Same element spec as `hospital_dataset`."""
  records = [s.images.astype(np.float32), s.labels.astype(np.int32)]
  if with_groups:
    records.append(patient_ids(s))
  shapes = [[None, *image_shape], [None], [None]]

  def relax(*arrays):
    # The element spec of a file-read shard: the example count is unknown.
    return tuple(
      tf.raw_ops.PlaceholderWithDefault(input=a, shape=shape) for a, shape in zip(arrays, shapes)
    )

  return tf.data.Dataset.from_tensors(tuple(records)).map(relax)


def in_memory(s: loaders.ImageSet, with_groups: bool = False) -> tuple:
  """The element of `hospital_dataset` as tensors held in this process (the
  in-process runtime's data: read once, not from the shard every round)."""
  records = [s.images.astype(np.float32, copy=False), s.labels.astype(np.int32, copy=False)]
  if with_groups:
    records.append(patient_ids(s))
  return tuple(tf.constant(a) for a in records)
