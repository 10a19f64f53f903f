"""Image files at their real bit depth, and one row per image (data/sources.py)."""

import contextlib
import logging
import os

from absl import logging as absl_logging
import numpy as np
from PIL import Image
import pytest

from dopamine_tff.data import sources
from tests import aptos_files


def _folder(tmp_path, images):
  """An APTOS folder whose images are the given PIL images, one row each."""
  root = aptos_files.write_aptos(str(tmp_path), [(f"im{i}", i % 5) for i in range(len(images))])
  for i, im in enumerate(images):
    im.save(os.path.join(root, "train_images", f"im{i}.png"))
  return root


def test_sixteen_bit_grey_rgba_and_palette_pngs_load_their_real_values(tmp_path):
  ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
  grey = np.full((16, 16), 64, np.uint8)
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 128  # red at half opacity
  palette = Image.fromarray(np.full((16, 16, 3), (0, 0, 255), np.uint8)).convert("P")
  images = [Image.fromarray(ramp), Image.fromarray(grey), Image.fromarray(rgba), palette]
  assert images[0].mode == "I;16"
  raw = sources.load_aptos(_folder(tmp_path, images), image_size=16)
  # 16 bits: the ramp's values, scaled by 65535, not saturated to 1 (white).
  np.testing.assert_allclose(raw.images[0][..., 0], ramp / 65535.0, atol=1e-6)
  assert np.all(raw.images[0][..., 0] == raw.images[0][..., 2])
  np.testing.assert_allclose(raw.images[1], 64 / 255.0, atol=1e-6)
  # Alpha composited over black (a fundus photograph's background).
  np.testing.assert_allclose(raw.images[2][..., 0], 200 / 255 * 128 / 255, atol=1e-6)
  np.testing.assert_allclose(raw.images[2][..., 1:], 0.0)
  np.testing.assert_allclose(raw.images[3], np.broadcast_to([0, 0, 1.0], (16, 16, 3)), atol=1e-6)


def test_distinct_sixteen_bit_images_stay_distinct_after_resizing(tmp_path):
  images = [Image.fromarray(np.full((20, 24), v, np.uint16)) for v in (1000, 30000, 60000)]
  raw = sources.load_aptos(_folder(tmp_path, images), image_size=8)
  np.testing.assert_allclose(
    raw.images.mean(axis=(1, 2, 3)), [v / 65535 for v in (1000, 30000, 60000)], rtol=1e-5
  )


def test_an_image_the_loader_cannot_represent_is_named(tmp_path):
  root = _folder(tmp_path, [Image.fromarray(np.zeros((8, 8), np.uint8))])
  floats = Image.fromarray(np.full((8, 8), 0.5, np.float32))  # mode F: no known range
  floats.save(os.path.join(root, "train_images", "im0.png"), format="TIFF")
  with pytest.raises(sources.DataError, match=r"im0\.png: mode F cannot be read as RGB"):
    sources.load_aptos(root, image_size=8)


def _csv(tmp_path, lines):
  path = tmp_path / "train.csv"
  path.write_text("id_code,diagnosis\n" + "".join(f"{line}\n" for line in lines))
  return str(path)


def test_identical_repeated_rows_are_dropped_and_counted(tmp_path):
  with absltest_logs() as logged:
    rows = sources.read_aptos_csv(_csv(tmp_path, ["a,0", "b,2", "a,0", "c,1", "b,2"]))
  assert [r.code for r in rows] == ["a", "b", "c"]
  assert any("dropped 2 repeated row(s)" in line for line in logged)


@contextlib.contextmanager
def absltest_logs():
  """absl's log lines, as the binaries print them."""
  lines = []
  handler = logging.Handler()
  handler.emit = lambda record: lines.append(record.getMessage())
  absl_logging.get_absl_logger().addHandler(handler)
  try:
    yield lines
  finally:
    absl_logging.get_absl_logger().removeHandler(handler)


def test_conflicting_labels_for_one_id_are_refused_naming_the_rows(tmp_path):
  with pytest.raises(
    sources.DataError, match=r"id_code 'a' appears in rows 2 and 4 .*diagnosis 0 vs diagnosis 3"
  ):
    sources.read_aptos_csv(_csv(tmp_path, ["a,0", "b,2", "a,3"]))


def test_an_image_too_large_to_decode_safely_is_named(tmp_path, monkeypatch):
  """The review: a 196-megapixel APTOS image was PIL's DecompressionBombError traceback."""
  root = _folder(tmp_path, [Image.fromarray(np.zeros((64, 64, 3), np.uint8))])
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x the limit
  with pytest.raises(sources.DataError, match=r"im0\.png is too large to decode safely"):
    sources.load_aptos(root, image_size=8)
