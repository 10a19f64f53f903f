"""Loaders: every source becomes per-hospital arrays plus a held-out test set.

Sources:
* ``synthetic``: built-in synthetic fundus photographs (data/synthetic.py).
* ``synthetic_public``: the built-in PUBLIC source for pretraining: the same
  renderer through another camera, with EyePACS's grade balance, drawn from a
  stream disjoint from ``synthetic``'s (data/synthetic.py, PUBLIC_*).
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

import dataclasses
import os

import numpy as np

from dopamine_tff.data import partition as partition_lib
from dopamine_tff.data import sources
from dopamine_tff.data import splits
from dopamine_tff.data import synthetic

DATASETS = ("synthetic", "synthetic_public", "digits", "aptos", "eyepacs")
# Pixel scaling from [0, 1]: ours, and the one ImageNet weights expect.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NORMALIZATIONS = {
  "minus_one_one": lambda x: x * 2.0 - 1.0,
  "imagenet": lambda x: (x - IMAGENET_MEAN) / IMAGENET_STD,
}
# Re-exported: callers catch loaders.DataError and read loaders.load_aptos.
DataError = sources.DataError
load_aptos = sources.load_aptos
DEFAULT_IMAGE_SIZE = {
  "synthetic": 64,
  "synthetic_public": 64,
  "digits": 8,
  "aptos": 224,
  "eyepacs": 224,
}


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
  """The hospitals' training sets and one held-out evaluation set.

  `test` is the test set, or (tuning: ``evaluation == "validation"``) a
  validation share of the training data; the test set is then never loaded.
  """

  name: str
  hospitals: tuple[ImageSet, ...]
  test: ImageSet
  num_classes: int
  evaluation: str = "test"

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
    normalization: 'minus_one_one' (x * 2 - 1, our default) or 'imagenet'
      ((x - mean) / std per channel, what ImageNet weights expect; RGB only).
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
  normalization: str = "minus_one_one"

  def __post_init__(self):
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(
        f"normalization must be one of {tuple(NORMALIZATIONS)}, got {self.normalization!r}"
      )
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


def _synthetic_cached(config: DataConfig, size: int, camera: str = "aptos"):
  n = config.num_examples or 3000
  cache_dir = os.environ.get("DOPAMINE_TFF_CACHE", os.path.expanduser("~/.cache/dopamine_tff"))
  name = "synthetic_v1" if camera == "aptos" else f"synthetic_{camera}_v1"
  path = os.path.join(cache_dir, f"{name}_n{n}_s{size}_seed{config.seed}.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      return sources.Raw(f["images"], f["labels"], synthetic.NUM_CLASSES)
  images, labels = synthetic.make_synthetic_retina(
    n, image_size=size, seed=config.seed, camera=camera
  )
  os.makedirs(cache_dir, exist_ok=True)
  tmp = path + f".{os.getpid()}.tmp.npz"
  np.savez(tmp, images=images, labels=labels)
  os.replace(tmp, path)  # atomic: concurrent runs never read half a file
  return sources.Raw(images, labels, synthetic.NUM_CLASSES)


# Examples and channels of the built-in and TFDS sources (aptos: checked from
# its CSV), to refuse an image size that cannot fit before allocating it.
_SIZES = {"synthetic": (3000, 3), "synthetic_public": (3000, 3), "digits": (1797, 1)}


def _raw(config: DataConfig) -> sources.Raw:
  size = config.resolved_image_size
  if config.dataset in _SIZES:
    count, channels = _SIZES[config.dataset]
    if config.num_examples and (config.dataset != "digits" or config.num_examples < count):
      count = config.num_examples
    sources.check_fits(count, size, channels, f"--image_size={size} on {config.dataset}")
  if config.dataset == "synthetic":
    return _synthetic_cached(config, size)
  if config.dataset == "synthetic_public":
    return _synthetic_cached(config, size, camera="public")
  if config.dataset == "digits":
    raw = sources.load_digits(size)
    if config.num_examples:
      raw = sources.Raw(raw.images[: config.num_examples], raw.labels[: config.num_examples], 10)
    return raw
  if config.dataset == "aptos":
    if config.hospital_dirs:
      return sources.load_hospital_dirs(config.hospital_dirs, size, config.num_examples)
    return sources.load_aptos(config.data_dir, size, config.num_examples)
  return sources.load_eyepacs(config.data_dir, size, config.num_examples)


def load(config: DataConfig) -> FederatedData:
  """Loads, normalises (to [-1,1] by default), holds out a test set and splits into hospitals.

  Where the data names each example's hospital (hospital_dirs, or a
  ``hospital`` column), the split follows it and the test set is held out
  from every hospital's share; otherwise ``config.partition`` deals the
  examples out. Where it names patients, a patient's images stay together
  (one hospital, one side of the test split). See dopamine_tff/data/splits.py.

  Raises:
    DataError: bad files or rows (named in the message).
    ValueError: a split that leaves a hospital without data.
  """
  raw = _raw(config)
  if raw.hospital is not None:
    parts, test = splits.given_split(raw, config)
  else:
    parts, test = splits.dealt_split(raw, config)
  name, evaluation = config.dataset, "test"
  if config.validation_fraction > 0:  # tuning never sees the test set
    parts, test = splits.validation_carve(raw, parts, config)
    name, evaluation = f"{config.dataset} (validation split)", "validation"
  if config.normalization == "imagenet" and raw.images.shape[-1] != 3:
    raise ValueError(
      f"normalization=imagenet needs RGB images; {config.dataset} has {raw.images.shape[-1]} channel(s)"
    )
  images, patients = NORMALIZATIONS[config.normalization](raw.images), raw.patients

  def subset(idx):
    return ImageSet(images[idx], raw.labels[idx], None if patients is None else patients[idx])

  return FederatedData(
    name=name,
    hospitals=tuple(subset(p) for p in parts),
    test=subset(test),
    num_classes=raw.num_classes,
    evaluation=evaluation,
  )
