"""Readers of every source: arrays in [0, 1], labels, hospital and patient ids.

* ``digits``: scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn).
* ``aptos``: the APTOS 2019 Kaggle release format: ``train.csv`` with columns
  ``id_code,diagnosis`` and ``train_images/<id_code>.png`` (or ``.jpg`` /
  ``.jpeg``); optional ``hospital`` and ``patient_id`` columns. One such
  folder per hospital with ``load_hospital_dirs``.
* ``eyepacs``: TFDS ``diabetic_retinopathy_detection`` (Kaggle 2015), prepared
  from a manual-download directory; patient ids from the file names.

Every problem with a file or a row is a DataError naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np


class DataError(ValueError):
  """Bad input data; the message names the file or row."""


@dataclasses.dataclass(frozen=True)
class Raw:
  """A loaded source before the test split: images in [0, 1]."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  hospital: np.ndarray | None = None  # hospital index per example, when the data says
  patients: np.ndarray | None = None  # patient id per example, when the data says


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size and images.shape[2] == size:
    return images.astype(np.float32)
  import tensorflow as tf  # only needed when resizing

  return tf.image.resize(images, (size, size), antialias=True).numpy().astype(np.float32)


def load_digits(image_size: int) -> Raw:
  """scikit-learn's digits: 1797 8x8 grey images, 10 classes, in [0,1]."""
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return Raw(_resize(images, image_size), digits.target.astype(np.int32), 10)


@dataclasses.dataclass(frozen=True)
class CsvRow:
  code: str
  label: int
  hospital: str | None = None
  patient: str | None = None


def read_aptos_csv(csv_path: str) -> list[CsvRow]:
  if not os.path.isfile(csv_path):
    raise DataError(f"APTOS label file not found: {csv_path}")
  if os.path.getsize(csv_path) == 0:
    raise DataError(f"{csv_path}: empty file; expected a header id_code,diagnosis and rows")
  rows = []
  # utf-8-sig: spreadsheet exports start with a byte-order mark.
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    fields = [(name or "").strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = fields
    missing = {"id_code", "diagnosis"} - set(fields)
    if missing:
      raise DataError(
        f"{csv_path}: missing column(s) {sorted(missing)}; "
        f"found {fields}; expected id_code,diagnosis"
      )
    for line, row in enumerate(reader, start=2):
      code, diag = (row["id_code"] or "").strip(), (row["diagnosis"] or "").strip()
      if not code:
        raise DataError(f"{csv_path} row {line}: empty id_code")
      try:
        label = int(diag)
      except ValueError:
        raise DataError(f"{csv_path} row {line}: diagnosis {diag!r} is not an integer") from None
      if not 0 <= label <= 4:
        raise DataError(f"{csv_path} row {line}: diagnosis {label} is outside 0-4")
      extra = {}
      for column, key in (("hospital", "hospital"), ("patient_id", "patient")):
        if column in fields:
          value = (row[column] or "").strip()
          if not value:
            raise DataError(f"{csv_path} row {line}: empty {column}")
          extra[key] = value
      rows.append((line, CsvRow(code, label, **extra)))
  if not rows:
    raise DataError(f"{csv_path}: a header but no rows")
  return _unique(rows, csv_path)


def _unique(rows: list[tuple[int, CsvRow]], csv_path: str) -> list[CsvRow]:
  """One row per id_code: identical repeats dropped (and logged), conflicts refused.

  A repeated image would be two DP units (the guarantee would cover half of
  what it says for it) and could land in both train and test.
  """
  first: dict[str, tuple[int, CsvRow]] = {}
  kept, dropped = [], 0
  for line, row in rows:
    if row.code not in first:
      first[row.code] = (line, row)
      kept.append(row)
    elif first[row.code][1] == row:
      dropped += 1
    else:
      seen_line, seen = first[row.code]
      raise DataError(
        f"{csv_path}: id_code {row.code!r} appears in rows {seen_line} and {line} with "
        f"different values ({_describe(seen)} vs {_describe(row)}); keep one row per image"
      )
  if dropped:
    from absl import logging

    logging.warning("%s: dropped %d repeated row(s) (same id_code, same values)", csv_path, dropped)
  return kept


def _describe(row: CsvRow) -> str:
  extra = "".join(
    f", {k} {v}" for k, v in (("hospital", row.hospital), ("patient_id", row.patient)) if v
  )
  return f"diagnosis {row.label}{extra}"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_path(folder: str, code: str) -> str:
  for suffix in IMAGE_SUFFIXES:
    path = os.path.join(folder, code + suffix)
    if os.path.isfile(path):
      return path
  raise DataError(f"image file not found: {os.path.join(folder, code)}{{.png,.jpg,.jpeg}}")


# Modes Pillow converts to 8-bit RGB without losing range (PNGs of 16 bits per
# colour channel open as 8-bit RGB/RGBA: Pillow keeps each sample's high byte).
_EIGHT_BIT = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _grey16(im, path: str) -> np.ndarray:
  """A 16-bit grey image as floats in [0, 1] (65535 is white), not saturated to 1."""
  values = np.asarray(im, dtype=np.float64)
  if values.min() < 0 or values.max() > 65535:  # mode I holds 32-bit integers
    raise DataError(
      f"image {path}: {im.mode} samples span [{values.min():g}, {values.max():g}], not a "
      "16-bit range; save it as 8- or 16-bit PNG"
    )
  return (values / 65535.0).astype(np.float32)


def _pixels(im, path: str) -> np.ndarray:
  """Any supported image as an RGB array in [0, 1] at its own size.

  Alpha is composited over black (a fundus photograph's background);
  palette images with a transparent colour count as having alpha.
  """
  mode = im.mode
  if mode in _SIXTEEN_BIT or (mode == "I" and im.format == "PNG"):
    return np.repeat(_grey16(im, path)[..., None], 3, axis=-1)
  if mode == "P" and "transparency" in im.info:
    mode = "PA"
  if mode in _ALPHA:
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    return rgba[..., :3] * rgba[..., 3:]
  if mode in _EIGHT_BIT:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
  raise DataError(
    f"image {path}: mode {mode} cannot be read as RGB (supported: 8- and 16-bit grey, RGB, "
    "CMYK, YCbCr, palette, with or without alpha)"
  )


def _resized(pixels: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of an [0, 1] RGB array, channel by channel at float precision."""
  from PIL import Image

  if pixels.shape[:2] == (size, size):
    return pixels.astype(np.float32)
  channels = [
    np.asarray(Image.fromarray(pixels[..., c], mode="F").resize((size, size), Image.BILINEAR))
    for c in range(pixels.shape[-1])
  ]
  return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def _read_image(path: str, size: int) -> np.ndarray:
  """An image file as a size x size RGB array in [0, 1], at the file's own bit depth."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      if im.mode in ("RGB", "L") or (im.mode == "P" and "transparency" not in im.info):
        # The common 8-bit case: resize in 8 bits, as every earlier result was made.
        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0
      return _resized(_pixels(im, path), size)
  except DataError:
    raise
  except Image.DecompressionBombError as e:
    raise DataError(f"image {path} is too large to decode safely: {e}") from None
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"unreadable or corrupt image {path}: {e}") from None


def check_fits(count: int, size: int, channels: int, what: str) -> None:
  """DataError, before anything is allocated, when `count` images of size^2 x
  channels float32 cannot fit in this machine's memory (with the copies the
  loader makes: read, normalised, split: three)."""
  need = 3 * count * size * size * channels * 4
  try:
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return
  if need > have:
    raise DataError(
      f"{what}: {count} images of {size}x{size}x{channels} as float32 need about "
      f"{need / 2**30:.1f} GiB (three copies while loading), more than this machine's "
      f"{have / 2**30:.1f} GiB; lower --image_size or --num_examples"
    )


def _ids(values: list[str]) -> np.ndarray:
  """Dense int64 ids of string keys, in order of first appearance."""
  index: dict[str, int] = {}
  return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def load_aptos(data_dir: str, image_size: int, max_examples: int = 0) -> Raw:
  """Reads the APTOS 2019 release format (train.csv + train_images/)."""
  rows = read_aptos_csv(os.path.join(data_dir, "train.csv"))
  if max_examples:
    rows = rows[:max_examples]
  check_fits(len(rows), image_size, 3, f"--image_size={image_size} on {data_dir}")
  folder = os.path.join(data_dir, "train_images")
  images = np.stack([_read_image(_image_path(folder, r.code), image_size) for r in rows])
  labels = np.array([r.label for r in rows], dtype=np.int32)
  hospital = patients = None
  if rows[0].hospital is not None:
    names = sorted({r.hospital for r in rows}, key=lambda h: (len(h), h))
    order = {h: i for i, h in enumerate(names)}
    hospital = np.array([order[r.hospital] for r in rows], dtype=np.int64)
  if rows[0].patient is not None:
    patients = _ids([r.patient for r in rows])
  return Raw(images, labels, 5, hospital, patients)


def load_hospital_dirs(dirs, image_size: int, max_examples: int = 0) -> Raw:
  """One APTOS-format folder per hospital; patient ids are kept apart per folder."""
  parts = [load_aptos(d, image_size, max_examples) for d in dirs]
  patients = None
  if all(p.patients is not None for p in parts):
    offsets = np.cumsum([0] + [int(p.patients.max()) + 1 for p in parts[:-1]])
    patients = np.concatenate([p.patients + o for p, o in zip(parts, offsets)])
  return Raw(
    np.concatenate([p.images for p in parts]),
    np.concatenate([p.labels for p in parts]),
    5,
    np.concatenate([np.full(len(p.labels), k, np.int64) for k, p in enumerate(parts)]),
    patients,
  )


EYEPACS_PREPARED = os.path.join("diabetic_retinopathy_detection", "btgraham-300")
EYEPACS_MANUAL = (
  ("trainLabels.csv", "file", "Kaggle's label file, about 0.5 MB"),
  ("train", "dir", "the 35,126 training .jpeg images unpacked from train.zip.001-005, ~35 GB"),
  ("test", "dir", "the 53,576 test .jpeg images unpacked from test.zip.001-007"),
  ("sample", "dir", "the 10 .jpeg images of sample.zip"),
)


def check_eyepacs_dir(data_dir: str) -> None:
  """DataError (one line, nothing written) unless TFDS can build EyePACS from data_dir."""
  prepared = os.path.join(data_dir, EYEPACS_PREPARED)
  if os.path.isdir(prepared) and any(
    os.path.isfile(os.path.join(prepared, v, "dataset_info.json")) for v in os.listdir(prepared)
  ):
    return
  manual = os.path.join(data_dir, "downloads", "manual")
  kinds = {"file": os.path.isfile, "dir": os.path.isdir}
  missing = [
    (n, why) for n, kind, why in EYEPACS_MANUAL if not kinds[kind](os.path.join(manual, n))
  ]
  if missing:
    what = "; ".join(f"{n}{'/' if n != 'trainLabels.csv' else ''} ({why})" for n, why in missing)
    raise DataError(
      f"eyepacs: {data_dir} holds neither a prepared copy ({prepared}/<version>/) nor "
      f"Kaggle's files; missing in {manual}: {what}. Preparing also downloads "
      "retinopathy_solution.csv from storage.googleapis.com"
    )


def load_eyepacs(data_dir: str, image_size: int, max_examples: int = 0):
  """TFDS diabetic_retinopathy_detection (btgraham-300), manual download dir."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  check_eyepacs_dir(data_dir)
  config = tfds.download.DownloadConfig(manual_dir=os.path.join(data_dir, "downloads", "manual"))
  ds = tfds.load(
    "diabetic_retinopathy_detection/btgraham-300",
    split="train",
    data_dir=data_dir,
    download_and_prepare_kwargs={"download_config": config},
  )
  if max_examples:
    ds = ds.take(max_examples)
  images, labels, names = [], [], []
  for ex in ds.as_numpy_iterator():
    img = tf.image.resize(ex["image"], (image_size, image_size), antialias=True)
    images.append(img.numpy().astype(np.float32) / 255.0)
    labels.append(int(ex["label"]))
    names.append(ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"]))
  if not images:
    raise DataError(f"no EyePACS examples found under {data_dir}")
  # "<patient>_left" / "<patient>_right": both eyes of a patient share an id.
  patients = _ids([n.rsplit("_", 1)[0] for n in names])
  return Raw(np.stack(images), np.array(labels, dtype=np.int32), 5, None, patients)
