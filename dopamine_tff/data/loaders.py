"""Loaders: every source becomes per-hospital arrays plus a held-out test set.

Sources:
* ``synthetic``: built-in synthetic fundus photographs (data/synthetic.py).
* ``digits``: scikit-learn's 8x8 handwritten digits (real images, 10 classes,
  shipped inside scikit-learn).
* ``aptos``: the APTOS 2019 Kaggle release format: ``train.csv`` with columns
  ``id_code,diagnosis`` and ``train_images/<id_code>.png`` of any size.
* ``eyepacs``: TFDS ``diabetic_retinopathy_detection`` (Kaggle 2015), prepared
  from a manual-download directory.

Images are resized to ``image_size`` and scaled to [-1, 1].
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from dopamine_tff.data import partition as partition_lib
from dopamine_tff.data import synthetic

DATASETS = ("synthetic", "digits", "aptos", "eyepacs")
DEFAULT_IMAGE_SIZE = {"synthetic": 64, "digits": 8, "aptos": 224, "eyepacs": 224}


class DataError(ValueError):
  """Bad input data; the message names the file or row."""


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Images float32 [N,H,W,C] in [-1,1] and int32 labels [N]."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """The hospitals' training sets and one held-out test set."""

  name: str
  hospitals: tuple[ImageSet, ...]
  test: ImageSet
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.test.images.shape[1:])

  @property
  def num_train(self) -> int:
    return sum(len(h) for h in self.hospitals)

  def pooled(self) -> ImageSet:
    """All hospitals' data in one set (the centralised settings)."""
    return ImageSet(
      np.concatenate([h.images for h in self.hospitals]),
      np.concatenate([h.labels for h in self.hospitals]),
    )

  def class_counts(self) -> np.ndarray:
    return np.stack([np.bincount(h.labels, minlength=self.num_classes) for h in self.hospitals])


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data, how big, and how it is split.

  Attributes:
    dataset: one of DATASETS.
    data_dir: folder of real data (aptos: holds train.csv and train_images/;
      eyepacs: TFDS data dir whose ``downloads/manual`` holds Kaggle's files).
    image_size: side length after resizing (None: the data set's default).
    num_hospitals: K.
    partition: 'iid', 'unequal' or 'dirichlet'.
    dirichlet_alpha: label-skew concentration for 'dirichlet'.
    test_fraction: share held out for testing.
    num_examples: size of the synthetic set, or a cap on real sets (0: all).
    seed: seed of generation, test split and partition.
  """

  dataset: str = "synthetic"
  data_dir: str | None = None
  image_size: int | None = None
  num_hospitals: int = 10
  partition: str = "iid"
  dirichlet_alpha: float = 0.5
  test_fraction: float = 0.2
  num_examples: int = 0
  seed: int = 0

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
    if self.image_size is not None and self.image_size < 8:
      raise ValueError(f"image_size must be >= 8, got {self.image_size}")
    if self.num_hospitals < 1:
      raise ValueError(f"num_hospitals must be >= 1, got {self.num_hospitals}")
    if self.partition not in partition_lib.SCHEMES:
      raise ValueError(f"partition must be one of {partition_lib.SCHEMES}, got {self.partition!r}")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
    if self.num_examples < 0:
      raise ValueError(f"num_examples must be >= 0, got {self.num_examples}")
    if self.dataset in ("aptos", "eyepacs") and not self.data_dir:
      raise ValueError(f"dataset {self.dataset!r} needs --data_dir")

  @property
  def resolved_image_size(self) -> int:
    return self.image_size or DEFAULT_IMAGE_SIZE[self.dataset]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size and images.shape[2] == size:
    return images.astype(np.float32)
  import tensorflow as tf  # only needed when resizing

  return tf.image.resize(images, (size, size), antialias=True).numpy().astype(np.float32)


def load_digits(image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
  """scikit-learn's digits: 1797 8x8 grey images, 10 classes, in [0,1]."""
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return _resize(images, image_size), digits.target.astype(np.int32), 10


def _read_aptos_csv(csv_path: str) -> list[tuple[str, int]]:
  if not os.path.isfile(csv_path):
    raise DataError(f"APTOS label file not found: {csv_path}")
  rows = []
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"id_code", "diagnosis"} - set(reader.fieldnames or [])
    if missing:
      raise DataError(
        f"{csv_path}: missing column(s) {sorted(missing)}; "
        f"found {reader.fieldnames}; expected id_code,diagnosis"
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
      rows.append((code, label))
  if not rows:
    raise DataError(f"{csv_path}: no rows")
  return rows


def _read_image(path: str, size: int) -> np.ndarray:
  from PIL import Image

  if not os.path.isfile(path):
    raise DataError(f"image file not found: {path}")
  try:
    with Image.open(path) as im:
      im = im.convert("RGB").resize((size, size), Image.BILINEAR)
      return np.asarray(im, dtype=np.float32) / 255.0
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"unreadable or corrupt image {path}: {e}") from None


def load_aptos(data_dir: str, image_size: int, max_examples: int = 0):
  """Reads the APTOS 2019 release format (train.csv + train_images/)."""
  rows = _read_aptos_csv(os.path.join(data_dir, "train.csv"))
  if max_examples:
    rows = rows[:max_examples]
  folder = os.path.join(data_dir, "train_images")
  images = np.stack(
    [_read_image(os.path.join(folder, f"{code}.png"), image_size) for code, _ in rows]
  )
  return images, np.array([lab for _, lab in rows], dtype=np.int32), 5


def load_eyepacs(data_dir: str, image_size: int, max_examples: int = 0):
  """TFDS diabetic_retinopathy_detection (btgraham-300), manual download dir."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  config = tfds.download.DownloadConfig(manual_dir=os.path.join(data_dir, "downloads", "manual"))
  ds = tfds.load(
    "diabetic_retinopathy_detection/btgraham-300",
    split="train",
    data_dir=data_dir,
    download_and_prepare_kwargs={"download_config": config},
  )
  if max_examples:
    ds = ds.take(max_examples)
  images, labels = [], []
  for ex in ds.as_numpy_iterator():
    img = tf.image.resize(ex["image"], (image_size, image_size), antialias=True)
    images.append(img.numpy().astype(np.float32) / 255.0)
    labels.append(int(ex["label"]))
  if not images:
    raise DataError(f"no EyePACS examples found under {data_dir}")
  return np.stack(images), np.array(labels, dtype=np.int32), 5


def _synthetic_cached(config: DataConfig, size: int):
  n = config.num_examples or 3000
  cache_dir = os.environ.get("DOPAMINE_TFF_CACHE", os.path.expanduser("~/.cache/dopamine_tff"))
  path = os.path.join(cache_dir, f"synthetic_v1_n{n}_s{size}_seed{config.seed}.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      return f["images"], f["labels"], synthetic.NUM_CLASSES
  images, labels = synthetic.make_synthetic_retina(n, image_size=size, seed=config.seed)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = path + f".{os.getpid()}.tmp.npz"
  np.savez(tmp, images=images, labels=labels)
  os.replace(tmp, path)  # atomic: concurrent runs never read half a file
  return images, labels, synthetic.NUM_CLASSES


def _split_test(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Stratified train/test index split."""
  rng = np.random.default_rng(seed + 7919)
  test = []
  for cls in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == cls))
    test.extend(idx[: int(round(fraction * len(idx)))].tolist())
  test = np.sort(np.array(test, dtype=np.int64))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def load(config: DataConfig) -> FederatedData:
  """Loads, normalises to [-1,1], holds out a test set and splits into hospitals.

  Raises:
    DataError: bad files or rows (named in the message).
    ValueError: a split that leaves a hospital without data.
  """
  size = config.resolved_image_size
  if config.dataset == "synthetic":
    images, labels, num_classes = _synthetic_cached(config, size)
  elif config.dataset == "digits":
    images, labels, num_classes = load_digits(size)
  elif config.dataset == "aptos":
    images, labels, num_classes = load_aptos(config.data_dir, size, config.num_examples)
  else:
    images, labels, num_classes = load_eyepacs(config.data_dir, size, config.num_examples)
  if config.num_examples and config.dataset == "digits":
    images, labels = images[: config.num_examples], labels[: config.num_examples]
  images = images * 2.0 - 1.0
  train_idx, test_idx = _split_test(labels, config.test_fraction, config.seed)
  parts = partition_lib.partition(
    labels[train_idx],
    config.num_hospitals,
    scheme=config.partition,
    alpha=config.dirichlet_alpha,
    seed=config.seed,
  )
  train_images, train_labels = images[train_idx], labels[train_idx]
  hospitals = tuple(ImageSet(train_images[p], train_labels[p]) for p in parts)
  return FederatedData(
    name=config.dataset,
    hospitals=hospitals,
    test=ImageSet(images[test_idx], labels[test_idx]),
    num_classes=num_classes,
  )
