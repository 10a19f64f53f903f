"""Loaders: every source, and every bad input named in the error."""

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from dopamine_tff.data import loaders
from tests import aptos_files


@pytest.fixture
def aptos_dir(tmp_path):
  rows = [(f"img{i:03d}", i % 5) for i in range(30)]
  return aptos_files.write_aptos(str(tmp_path / "aptos"), rows)


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


def test_csv_with_byte_order_mark_loads(aptos_dir):
  path = os.path.join(aptos_dir, "train.csv")
  text = pathlib.Path(path).read_text(encoding="utf-8")
  with open(path, "w", encoding="utf-8-sig") as f:  # as Excel writes it
    f.write(text)
  assert pathlib.Path(path).read_bytes()[:3] == b"\xef\xbb\xbf"
  data = loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, num_hospitals=2))
  assert data.num_train + len(data.test) == 30


def test_jpg_and_jpeg_images_load(aptos_dir):
  folder = os.path.join(aptos_dir, "train_images")
  for i, suffix in ((0, ".jpg"), (1, ".jpeg")):
    png = os.path.join(folder, f"img{i:03d}.png")
    Image.open(png).convert("RGB").save(os.path.join(folder, f"img{i:03d}{suffix}"), "JPEG")
    os.remove(png)
  data = loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, num_hospitals=2))
  assert data.num_train + len(data.test) == 30
  os.remove(os.path.join(folder, "img000.jpg"))
  with pytest.raises(loaders.DataError, match=r"img000\{\.png,\.jpg,\.jpeg\}"):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, num_hospitals=2))


@pytest.mark.parametrize(
  "text,message", [("", "empty file"), ("id_code,diagnosis\n", "a header but no rows")]
)
def test_empty_csv_says_so(tmp_path, text, message):
  (tmp_path / "train.csv").write_text(text)
  with pytest.raises(loaders.DataError, match=message):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=str(tmp_path)))


def _codes(data, aptos_dir):
  """id_code of every image, recovered by matching pixels against the files."""
  raw = loaders.load_aptos(aptos_dir, 16)
  flat = (raw.images * 2.0 - 1.0).reshape(len(raw.labels), -1)

  def codes(images):
    return [int(np.argmin(np.abs(flat - im.reshape(1, -1)).sum(1))) for im in images]

  return [codes(h.images) for h in data.hospitals], codes(data.test.images)


def test_hospital_column_is_the_split(aptos_dir):
  aptos_files.with_columns(aptos_dir, hospital=lambda i: ["north", "south", "east"][i % 3])
  data = loaders.load(
    loaders.DataConfig(
      dataset="aptos", data_dir=aptos_dir, num_hospitals=3, image_size=16, test_fraction=0.5
    )
  )
  hospitals, test = _codes(data, aptos_dir)
  # Hospitals are numbered by name ("east" 0, "north" 1, "south" 2); each holds only its rows.
  for k, owner in enumerate((2, 0, 1)):
    assert hospitals[k] and all(i % 3 == owner for i in hospitals[k])
  assert sorted(sum(hospitals, []) + test) == list(range(30))
  assert {i % 3 for i in test} == {0, 1, 2}  # every hospital contributes test images
  with pytest.raises(loaders.DataError, match="pass --num_hospitals=3"):
    loaders.load(loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, num_hospitals=4))


def test_hospital_dirs_keep_their_data(tmp_path):
  a = aptos_files.write_aptos(str(tmp_path / "a"), [(f"a{i}", i % 5) for i in range(20)])
  b = aptos_files.write_aptos(str(tmp_path / "b"), [(f"b{i}", i % 5) for i in range(40)])
  data = loaders.load(
    loaders.DataConfig(
      dataset="aptos", hospital_dirs=(a, b), num_hospitals=2, test_fraction=0.2, image_size=16
    )
  )
  # Stratified per hospital: 1 of each class's 4 in a, 2 of each class's 8 in b.
  assert [len(h) for h in data.hospitals] == [15, 30] and len(data.test) == 15
  with pytest.raises(ValueError, match="num_hospitals=3 but 2 hospital_dirs"):
    loaders.DataConfig(dataset="aptos", hospital_dirs=(a, b), num_hospitals=3)


def test_patient_ids_keep_a_patients_images_together(aptos_dir):
  aptos_files.with_columns(aptos_dir, patient_id=lambda i: f"p{i // 2}")  # two images per patient
  data = loaders.load(
    loaders.DataConfig(dataset="aptos", data_dir=aptos_dir, num_hospitals=3, image_size=16)
  )
  hospitals, test = _codes(data, aptos_dir)
  for group in [*hospitals, test]:
    assert group and all((i ^ 1) in group for i in group)  # i ^ 1: the same patient's other image
  for h in data.hospitals:
    assert h.patients is not None and len(np.unique(h.patients)) * 2 == len(h)
  assert data.pooled().patients is not None


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
  with pytest.raises(loaders.DataError, match=r"img007\{\.png,\.jpg,\.jpeg\}"):
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


def _eyepacs_manual_files(root):
  manual = os.path.join(root, "downloads", "manual")
  for name in ("train", "test", "sample"):
    os.makedirs(os.path.join(manual, name))
  with open(os.path.join(manual, "trainLabels.csv"), "w") as f:
    f.write("image,level\n")


def test_eyepacs_empty_folder_is_one_line_and_writes_nothing(tmp_path):
  with pytest.raises(loaders.DataError) as e:
    loaders.load(loaders.DataConfig(dataset="eyepacs", data_dir=str(tmp_path)))
  msg = str(e.value)
  assert "\n" not in msg
  assert os.path.join(str(tmp_path), "downloads", "manual") in msg
  for expected in ("trainLabels.csv", "train/", "test/", "sample/", "35 GB"):
    assert expected in msg
  assert os.listdir(tmp_path) == []  # nothing created under the given path


def test_eyepacs_through_tfds_mock(tmp_path):
  import tensorflow_datasets as tfds

  _eyepacs_manual_files(str(tmp_path))
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


def test_validation_split_comes_from_training_data_and_never_the_test_set():
  base = loaders.DataConfig(dataset="digits", num_hospitals=3)
  full = loaders.load(base)
  tuned = loaders.load(dataclasses.replace(base, validation_fraction=0.25))
  assert tuned.name == "digits (validation split)"

  def rows(images):
    return {im.tobytes() for im in images}

  test, train = rows(full.test.images), rows(full.pooled().images)
  val = rows(tuned.test.images)
  assert val <= train and not (val & test)  # validation is training data, test untouched
  assert not (rows(tuned.pooled().images) & (val | test))
  assert abs(len(val) / len(train) - 0.25) < 0.03
