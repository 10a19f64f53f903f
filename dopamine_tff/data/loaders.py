"""Loaders: every source becomes per-hospital arrays plus a held-out test set.

Sources:
* ``synthetic``: built-in synthetic fundus photographs (data/synthetic.py).
* ``digits``: scikit-learn's 8x8 handwritten digits (real images, 10 classes,
  shipped inside scikit-learn).
* ``aptos``: the APTOS 2019 Kaggle release format: ``train.csv`` with columns
  ``id_code,diagnosis`` and ``train_images/<id_code>.png`` (or ``.jpg`` /
  ``.jpeg``) of any size. Two optional columns: ``hospital`` (the hospitals
  that already hold their own data: the split follows it) and ``patient_id``
  (the privacy unit of ``--privacy_unit=patient``). Instead of one folder,
  ``hospital_dirs`` names one such folder per hospital.
* ``eyepacs``: TFDS ``diabetic_retinopathy_detection`` (Kaggle 2015), prepared
  from a manual-download directory; patient ids come from the file names
  ``<patient>_left`` / ``<patient>_right``.

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
  """Images float32 [N,H,W,C] in [-1,1], int32 labels [N] and, where the
  source names them, int64 patient ids [N] (None: every image its own patient).
  """

  images: np.ndarray
  labels: np.ndarray
  patients: np.ndarray | None = None

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
    patients = None
    if all(h.patients is not None for h in self.hospitals):
      patients = np.concatenate([h.patients for h in self.hospitals])
    return ImageSet(
      np.concatenate([h.images for h in self.hospitals]),
      np.concatenate([h.labels for h in self.hospitals]),
      patients,
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
    num_examples: size of the synthetic set, or a cap on real sets (0: the
      whole set; a cap keeps the first N rows of the CSV / the first N
      EyePACS examples).
    seed: seed of generation, test split and partition.
    hospital_dirs: aptos only: one APTOS-format folder per hospital (K is
      their number; each hospital keeps its own images). Exclusive with
      data_dir.
    validation_fraction: > 0 for tuning: that share of every hospital's
      training data (stratified) becomes the evaluation set and the test set
      is not loaded into the result at all, so choices never see it.
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
  hospital_dirs: tuple = ()
  validation_fraction: float = 0.0

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
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
    if self.num_examples < 0:
      raise ValueError(f"num_examples must be >= 0, got {self.num_examples}")
    if self.hospital_dirs:
      if self.dataset != "aptos":
        raise ValueError("hospital_dirs applies to --dataset=aptos (APTOS-format folders)")
      if self.data_dir:
        raise ValueError("give either data_dir (one pooled folder) or hospital_dirs, not both")
      if len(self.hospital_dirs) != self.num_hospitals:
        raise ValueError(
          f"num_hospitals={self.num_hospitals} but {len(self.hospital_dirs)} hospital_dirs"
        )
    elif self.dataset in ("aptos", "eyepacs") and not self.data_dir:
      raise ValueError(f"dataset {self.dataset!r} needs --data_dir")

  @property
  def resolved_image_size(self) -> int:
    return self.image_size or DEFAULT_IMAGE_SIZE[self.dataset]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size and images.shape[2] == size:
    return images.astype(np.float32)
  import tensorflow as tf  # only needed when resizing

  return tf.image.resize(images, (size, size), antialias=True).numpy().astype(np.float32)


def load_digits(image_size: int) -> _Raw:
  """scikit-learn's digits: 1797 8x8 grey images, 10 classes, in [0,1]."""
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return _Raw(_resize(images, image_size), digits.target.astype(np.int32), 10)


@dataclasses.dataclass(frozen=True)
class CsvRow:
  code: str
  label: int
  hospital: str | None = None
  patient: str | None = None


def _read_aptos_csv(csv_path: str) -> list[CsvRow]:
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
      rows.append(CsvRow(code, label, **extra))
  if not rows:
    raise DataError(f"{csv_path}: a header but no rows")
  return rows


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_path(folder: str, code: str) -> str:
  for suffix in IMAGE_SUFFIXES:
    path = os.path.join(folder, code + suffix)
    if os.path.isfile(path):
      return path
  raise DataError(f"image file not found: {os.path.join(folder, code)}{{.png,.jpg,.jpeg}}")


def _read_image(path: str, size: int) -> np.ndarray:
  from PIL import Image

  try:
    with Image.open(path) as im:
      im = im.convert("RGB").resize((size, size), Image.BILINEAR)
      return np.asarray(im, dtype=np.float32) / 255.0
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"unreadable or corrupt image {path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class _Raw:
  """A loaded source before the test split: images in [0, 1]."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  hospital: np.ndarray | None = None  # hospital index per example, when the data says
  patients: np.ndarray | None = None  # patient id per example, when the data says


def _ids(values: list[str]) -> np.ndarray:
  """Dense int64 ids of string keys, in order of first appearance."""
  index: dict[str, int] = {}
  return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def load_aptos(data_dir: str, image_size: int, max_examples: int = 0) -> _Raw:
  """Reads the APTOS 2019 release format (train.csv + train_images/)."""
  rows = _read_aptos_csv(os.path.join(data_dir, "train.csv"))
  if max_examples:
    rows = rows[:max_examples]
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
  return _Raw(images, labels, 5, hospital, patients)


def load_hospital_dirs(dirs, image_size: int, max_examples: int = 0) -> _Raw:
  """One APTOS-format folder per hospital; patient ids are kept apart per folder."""
  parts = [load_aptos(d, image_size, max_examples) for d in dirs]
  patients = None
  if all(p.patients is not None for p in parts):
    offsets = np.cumsum([0] + [int(p.patients.max()) + 1 for p in parts[:-1]])
    patients = np.concatenate([p.patients + o for p, o in zip(parts, offsets)])
  return _Raw(
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
  return _Raw(np.stack(images), np.array(labels, dtype=np.int32), 5, None, patients)


def _synthetic_cached(config: DataConfig, size: int):
  n = config.num_examples or 3000
  cache_dir = os.environ.get("DOPAMINE_TFF_CACHE", os.path.expanduser("~/.cache/dopamine_tff"))
  path = os.path.join(cache_dir, f"synthetic_v1_n{n}_s{size}_seed{config.seed}.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      return _Raw(f["images"], f["labels"], synthetic.NUM_CLASSES)
  images, labels = synthetic.make_synthetic_retina(n, image_size=size, seed=config.seed)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = path + f".{os.getpid()}.tmp.npz"
  np.savez(tmp, images=images, labels=labels)
  os.replace(tmp, path)  # atomic: concurrent runs never read half a file
  return _Raw(images, labels, synthetic.NUM_CLASSES)


def _split_test(
  labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Stratified train/test index split; a group (patient) falls wholly on one side."""
  rng = np.random.default_rng(seed + 7919)
  if groups is None:
    groups = np.arange(len(labels))
  uniq, first = np.unique(groups, return_index=True)
  group_labels = labels[first]
  test_groups = []
  for cls in np.unique(group_labels):
    idx = rng.permutation(np.flatnonzero(group_labels == cls))
    test_groups.extend(uniq[idx[: int(round(fraction * len(idx)))]].tolist())
  is_test = np.isin(groups, np.array(test_groups, dtype=groups.dtype))
  return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _partition(labels, groups, config) -> list[np.ndarray]:
  """Hospital index arrays; a group (patient) goes wholly to one hospital."""
  if groups is None:
    return partition_lib.partition(
      labels,
      config.num_hospitals,
      scheme=config.partition,
      alpha=config.dirichlet_alpha,
      seed=config.seed,
    )
  uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
  parts = partition_lib.partition(
    labels[first],
    config.num_hospitals,
    scheme=config.partition,
    alpha=config.dirichlet_alpha,
    seed=config.seed,
  )
  return [np.flatnonzero(np.isin(inverse, p)) for p in parts]


def _raw(config: DataConfig) -> _Raw:
  size = config.resolved_image_size
  if config.dataset == "synthetic":
    return _synthetic_cached(config, size)
  if config.dataset == "digits":
    raw = load_digits(size)
    if config.num_examples:
      raw = _Raw(raw.images[: config.num_examples], raw.labels[: config.num_examples], 10)
    return raw
  if config.dataset == "aptos":
    if config.hospital_dirs:
      return load_hospital_dirs(config.hospital_dirs, size, config.num_examples)
    return load_aptos(config.data_dir, size, config.num_examples)
  return load_eyepacs(config.data_dir, size, config.num_examples)


def load(config: DataConfig) -> FederatedData:
  """Loads, normalises to [-1,1], holds out a test set and splits into hospitals.

  Where the data names each example's hospital (hospital_dirs, or a
  ``hospital`` column), the split follows it and the test set is held out
  from every hospital's share; otherwise ``config.partition`` deals the
  examples out. Where it names patients, a patient's images stay together
  (one hospital, one side of the test split).

  Raises:
    DataError: bad files or rows (named in the message).
    ValueError: a split that leaves a hospital without data.
  """
  raw = _raw(config)
  images, labels, patients = raw.images * 2.0 - 1.0, raw.labels, raw.patients
  if raw.hospital is not None:
    found = int(raw.hospital.max()) + 1
    if found != config.num_hospitals:
      raise DataError(
        f"the data names {found} hospitals (hospital column / hospital_dirs) but "
        f"num_hospitals={config.num_hospitals}; pass --num_hospitals={found}"
      )
    if config.partition != "iid":
      raise ValueError(
        f"partition={config.partition!r}: the data names each example's hospital, so the "
        "split is given; drop --partition"
      )
    train_idx, test_idx = [], []
    for k in range(found):
      own = np.flatnonzero(raw.hospital == k)
      tr, te = _split_test(
        labels[own],
        config.test_fraction,
        config.seed + k,
        None if patients is None else patients[own],
      )
      if len(tr) == 0:
        raise DataError(f"hospital {k} has {len(own)} examples: none left after the test split")
      train_idx.append(own[tr])
      test_idx.append(own[te])
    parts = train_idx
    test = np.sort(np.concatenate(test_idx))
  else:
    train, test = _split_test(labels, config.test_fraction, config.seed, patients)
    parts = [
      train[p]
      for p in _partition(labels[train], None if patients is None else patients[train], config)
    ]

  def subset(idx):
    return ImageSet(images[idx], labels[idx], None if patients is None else patients[idx])

  name = config.dataset
  if config.validation_fraction > 0:
    # Tuning: carve the evaluation set out of every hospital's training data.
    kept, held = [], []
    for k, p in enumerate(parts):
      tr, va = _split_test(
        labels[p],
        config.validation_fraction,
        config.seed + 104729 + k,
        None if patients is None else patients[p],
      )
      kept.append(p[tr])
      held.append(p[va])
    parts, test = kept, np.sort(np.concatenate(held))
    name = f"{config.dataset} (validation split)"
  return FederatedData(
    name=name,
    hospitals=tuple(subset(p) for p in parts),
    test=subset(test),
    num_classes=raw.num_classes,
  )
