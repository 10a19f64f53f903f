"""Hospital arrays <-> the shard files the TFF worker reads.

TFF then ships only a path per hospital and round; the worker reads the file.
Two layouts:

* one TFRecord per hospital with all its arrays (``hospital_dataset``): FedAvg
  and FPDP train on every local example each round;
* for the DP-SGD rounds (CDP, FSCDP), ``example_files=True``: the labels (and
  patient ids) in the TFRecord, and each image in its own raw float32 file, so
  that the worker draws the Poisson sample first and reads only the ~q N
  sampled images (``read_examples``), not the hospital's whole set. Which
  files a round reads is visible only on the hospital's own host.
"""

from __future__ import annotations

import os
import shutil

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


EXAMPLES = ".examples"  # beside hospital_KKKK.tfrec: one raw float32 file per image


def write_shards(
  sets: list[loaders.ImageSet],
  directory: str,
  with_groups: bool = False,
  example_files: bool = False,
) -> list[str]:
  """Writes each hospital's arrays to one file; returns the paths.

  With ``with_groups`` a record holds the dense patient id per example. With
  ``example_files`` the images go to one file each in ``<path>.examples/``
  and the TFRecord holds the labels (and patient ids) only.
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  for k, s in enumerate(sets):
    path = os.path.join(directory, f"hospital_{k:04d}.tfrec")
    records = [] if example_files else [s.images]
    records += [s.labels] + ([patient_ids(s)] if with_groups else [])
    if example_files:
      _write_examples(s.images, path + EXAMPLES)
    tmp = path + ".tmp"
    try:
      with tf.io.TFRecordWriter(tmp) as w:
        for array in records:
          w.write(tf.io.serialize_tensor(tf.constant(array)).numpy())
    except tf.errors.OpError as e:  # TF reports a full disk as its own error
      if os.path.exists(tmp):
        os.remove(tmp)
      raise _failed(path, e.message) from None
    os.replace(tmp, path)
    paths.append(path)
  return paths


def _failed(path: str, why: str) -> durable.WriteFailed:
  return durable.WriteFailed(
    f"cannot write the training-data shard {path}: {why}; free space (or fix the disk) "
    "and start again"
  )


def _write_examples(images: np.ndarray, directory: str) -> None:
  """Each image as raw little-endian float32 in `directory`/NNNNNNNN.f32 (atomically)."""
  tmp = directory + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    for i, image in enumerate(np.asarray(images, "<f4")):
      with open(os.path.join(tmp, f"{i:08d}.f32"), "wb") as f:
        f.write(image.tobytes())
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise _failed(directory, e.strerror or str(e)) from None
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)


def read_examples(paths, image_shape):
  """The images of `paths` (string [B], from an example-files shard): float32 [B, *shape]."""
  shape = [int(d) for d in image_shape]

  def one(path):
    return tf.reshape(tf.io.decode_raw(tf.io.read_file(path), tf.float32), shape)

  return tf.map_fn(one, paths, fn_output_signature=tf.TensorSpec(shape, tf.float32))


def hospital_dataset(
  path: str, image_shape, with_groups: bool = False, example_files: bool = False
) -> tf.data.Dataset:
  """One element: the hospital's (images [N,H,W,C], labels [N][, patient ids [N]]).

  With ``example_files`` the first part is each image's file path (string
  [N]) instead: the computation reads the ones it samples (``read_examples``).
  """
  if example_files:
    return _example_files_dataset(path, with_groups)

  def parse(records):
    x = tf.io.parse_tensor(records[0], tf.float32)
    y = tf.io.parse_tensor(records[1], tf.int32)
    out = (tf.ensure_shape(x, [None, *image_shape]), tf.ensure_shape(y, [None]))
    if with_groups:
      out = (*out, tf.ensure_shape(tf.io.parse_tensor(records[2], tf.int32), [None]))
    return out

  return tf.data.TFRecordDataset(path).batch(3 if with_groups else 2).map(parse)


def _example_files_dataset(path: str, with_groups: bool) -> tf.data.Dataset:
  directory = path + EXAMPLES

  def parse(records):
    y = tf.ensure_shape(tf.io.parse_tensor(records[0], tf.int32), [None])
    index = tf.strings.as_string(tf.range(tf.size(y)), width=8, fill="0")
    files = tf.strings.join([directory + "/", index, ".f32"])
    out = (files, y)
    if with_groups:
      out = (*out, tf.ensure_shape(tf.io.parse_tensor(records[1], tf.int32), [None]))
    return out

  return tf.data.TFRecordDataset(path).batch(2 if with_groups else 1).map(parse)


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
