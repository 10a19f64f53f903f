"""Shard files: what the TFF worker reads is what the hospital holds."""

import numpy as np
import pytest

from dopamine_tff.data import loaders
from dopamine_tff.data import shards


def _set(n, patients=None):
  rng = np.random.default_rng(n)
  return loaders.ImageSet(
    rng.normal(size=(n, 4, 4, 1)).astype(np.float32),
    rng.integers(0, 3, n).astype(np.int32),
    patients,
  )


@pytest.mark.parametrize("with_groups", [False, True])
def test_round_trip(tmp_path, with_groups):
  sets = [_set(5, np.array([10, 3, 10, 7, 3])), _set(3, np.array([5, 6, 5]))]
  paths = shards.write_shards(sets, str(tmp_path), with_groups)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["hospital_0000.tfrec", "hospital_0001.tfrec"]
  for s, path in zip(sets, paths):
    (elem,) = list(shards.hospital_dataset(path, (4, 4, 1), with_groups))
    np.testing.assert_array_equal(elem[0].numpy(), s.images)
    np.testing.assert_array_equal(elem[1].numpy(), s.labels)
    if with_groups:
      np.testing.assert_array_equal(elem[2].numpy(), shards.patient_ids(s))
  assert list(shards.patient_ids(sets[0])) == [2, 0, 2, 1, 0]  # dense, by sorted id


def test_patient_unit_without_patient_ids_names_the_problem():
  with pytest.raises(ValueError, match="privacy_unit=patient needs patient ids"):
    shards.patient_ids(_set(4))


@pytest.mark.parametrize("with_groups", [False, True])
def test_inline_datasets_are_the_shards_element_for_element(tmp_path, with_groups):
  """Workers on other hosts get the arrays in the request (--worker_data=inline):
  the same element spec as the file-read shard, so one computation takes both."""
  sets = [_set(5, np.array([10, 3, 10, 7, 3])), _set(0, np.zeros(0, np.int64))]
  paths = shards.write_shards(sets, str(tmp_path), with_groups)
  for s, path in zip(sets, paths):
    from_file = shards.hospital_dataset(path, (4, 4, 1), with_groups)
    inline = shards.inline_dataset(s, (4, 4, 1), with_groups)
    assert inline.element_spec == from_file.element_spec
    (a,), (b,) = list(from_file), list(inline)
    assert len(a) == len(b) == (3 if with_groups else 2)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("with_groups", [False, True])
def test_example_files_shard_holds_each_image_in_its_own_file(tmp_path, with_groups):
  import tensorflow as tf

  sets = [_set(5, np.array([10, 3, 10, 7, 3])), _set(0, np.zeros(0, np.int64))]
  paths = shards.write_shards(sets, str(tmp_path), with_groups, example_files=True)
  for s, path in zip(sets, paths):
    (elem,) = list(shards.hospital_dataset(path, (4, 4, 1), with_groups, example_files=True))
    files = elem[0].numpy()
    assert len(files) == len(s) and all(f.endswith(b".f32") for f in files)
    images = shards.read_examples(tf.constant(files), (4, 4, 1)).numpy()
    np.testing.assert_array_equal(images, s.images.reshape(-1, 4, 4, 1))
    np.testing.assert_array_equal(elem[1].numpy(), s.labels)
    if with_groups:
      np.testing.assert_array_equal(elem[2].numpy(), shards.patient_ids(s))
    some = shards.read_examples(tf.constant(files[[3, 1]] if len(s) else files), (4, 4, 1))
    np.testing.assert_array_equal(some.numpy(), s.images[[3, 1]] if len(s) else s.images)


def test_a_full_disk_while_writing_example_files_names_the_shard(tmp_path, monkeypatch):
  import builtins

  real_open = builtins.open

  def full(path, mode="r", *a, **kw):
    if str(path).endswith(".f32"):
      raise OSError(28, "No space left on device")
    return real_open(path, mode, *a, **kw)

  monkeypatch.setattr(builtins, "open", full)
  with pytest.raises(Exception, match="cannot write the training-data shard .*No space left"):
    shards.write_shards([_set(3)], str(tmp_path), example_files=True)
  assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.examples*"))
