"""Loaders: every source, and every bad input named in the error."""

import os

import numpy as np
from PIL import Image
import pytest

from dopamine_tff.data import loaders


def _write_aptos(root, rows, sizes=None):
  os.makedirs(os.path.join(root, "train_images"), exist_ok=True)
  rng = np.random.default_rng(0)
  with open(os.path.join(root, "train.csv"), "w") as f:
    f.write("id_code,diagnosis\n")
    for i, (code, diag) in enumerate(rows):
      f.write(f"{code},{diag}\n")
      h, w = (sizes or [(40 + i, 50 + 2 * i)] * len(rows))[i]
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        os.path.join(root, "train_images", f"{code}.png")
      )
  return root


@pytest.fixture
def aptos_dir(tmp_path):
  rows = [(f"img{i:03d}", i % 5) for i in range(30)]
  return _write_aptos(str(tmp_path / "aptos"), rows)


def test_aptos_folder_loads_and_splits(aptos_dir):
  data = loaders.load(
    loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, image_size=32, num_hospitals=3)
  )
  assert data.image_shape == (32, 32, 3)
  assert data.num_train + len(data.test) == 30
  assert len(data.hospitals) == 3
  assert data.test.images.min() >= -1.0 and data.test.images.max() <= 1.0
  assert data.num_classes == 5
  assert data.class_counts().sum() == data.num_train


def test_missing_csv(tmp_path):
  with pytest.raises(loaders.DataError, match="train.csv"):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=str(tmp_path)))


def test_csv_without_columns(aptos_dir):
  with open(os.path.join(aptos_dir, "train.csv"), "w") as f:
    f.write("image,grade\nimg000,1\n")
  with pytest.raises(loaders.DataError, match=r"missing column\(s\) \['diagnosis', 'id_code'\]"):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir))


@pytest.mark.parametrize(
  "bad,message",
  [("7", "row 5: diagnosis 7 is outside 0-4"), ("x", "row 5: diagnosis 'x' is not an integer")],
)
def test_bad_label_names_row(aptos_dir, bad, message):
  path = os.path.join(aptos_dir, "train.csv")
  with open(path) as f:
    lines = f.read().splitlines()
  lines[4] = lines[4].split(",")[0] + "," + bad
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(loaders.DataError, match=message):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir))


def test_missing_image_names_file(aptos_dir):
  os.remove(os.path.join(aptos_dir, "train_images", "img007.png"))
  with pytest.raises(loaders.DataError, match="img007.png"):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir))


def test_corrupt_image_names_file(aptos_dir):
  with open(os.path.join(aptos_dir, "train_images", "img011.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n not really a png")
  with pytest.raises(loaders.DataError, match="corrupt image .*img011.png"):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir))


def test_more_hospitals_than_data(aptos_dir):
  with pytest.raises(ValueError, match="larger than the data"):
    loaders.load(
      loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, image_size=16, num_hospitals=100)
    )


def test_digits():
  data = loaders.load(loaders.DataConfig(dataset="digits", num_hospitals=10))
  assert data.num_classes == 10
  assert data.image_shape == (8, 8, 1)
  assert data.num_train + len(data.test) == 1797
  sizes = [len(h) for h in data.hospitals]
  assert max(sizes) - min(sizes) <= 1


def test_synthetic_is_cached_and_deterministic():
  cfg = loaders.DataConfig(dataset="synthetic", num_examples=60, image_size=16, num_hospitals=2)
  a, b = loaders.load(cfg), loaders.load(cfg)
  np.testing.assert_array_equal(a.test.images, b.test.images)
  assert a.image_shape == (16, 16, 3)


def test_eyepacs_through_tfds_mock(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    data = loaders.load(
      loaders.DataConfig(dataset="eyepacs", data_dir=str(tmp_path), image_size=24, num_hospitals=2)
    )
  assert data.image_shape == (24, 24, 3)
  assert data.num_train + len(data.test) == 12
  assert set(np.concatenate([h.labels for h in data.hospitals])) <= set(range(5))


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"dataset": "mnist"}, "dataset"),
    ({"dataset": "aptos"}, "needs --data_dir"),
    ({"num_hospitals": 0}, "num_hospitals"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"image_size": 2}, "image_size"),
    ({"partition": "random"}, "partition"),
  ],
)
def test_bad_config(kwargs, message):
  with pytest.raises(ValueError, match=message):
    loaders.DataConfig(**kwargs)
