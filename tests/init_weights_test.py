"""Starting weights from a file (issue 19): loaded exactly, checked, recorded, resumable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dopamine_tff import configs
from dopamine_tff import init_weights
from dopamine_tff import models
from dopamine_tff import trainers
from dopamine_tff.data import loaders
from dopamine_tff.data import synthetic
from dopamine_tff.program import loop
from dopamine_tff.program import run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)


def _write(path, weights):
  np.savez(path, *weights)
  return str(path)


def test_a_file_s_weights_are_the_start_exactly(digits, tmp_path):
  theirs = models.initial_weights("small_cnn", SHAPE, 10, seed=3)
  path = _write(tmp_path / "w.npz", theirs)
  cfg = configs.TrainConfig(setting="fscdp", runtime="in_process", init_weights=path, seed=0)
  trainer = trainers.make_trainer(cfg, digits, str(tmp_path / "scratch"))
  for got, want in zip(trainer.weights(trainer.initial_state()), theirs):
    np.testing.assert_array_equal(got, want)
  ours = models.initial_weights("small_cnn", SHAPE, 10, seed=0)
  assert not np.array_equal(ours[0], theirs[0])  # not the seed's draw
  assert trainer.provenance.sha256 == init_weights.sha256_of(path)


def test_a_mismatch_names_the_variable_and_a_head_can_be_redrawn(tmp_path):
  five = _write(tmp_path / "five.npz", models.initial_weights("small_cnn", SHAPE, 5, seed=1))
  with pytest.raises(
    init_weights.InitWeightsError, match=r"variable 8 \(logits/kernel:0\).*--reinit_head"
  ):
    init_weights.load(five, "small_cnn", SHAPE, 10, seed=0)
  weights, prov = init_weights.load(five, "small_cnn", SHAPE, 10, seed=0, reinit_head=True)
  fresh = models.initial_weights("small_cnn", SHAPE, 10, seed=0)
  kept = models.initial_weights("small_cnn", SHAPE, 5, seed=1)
  for i in range(8):
    np.testing.assert_array_equal(weights[i], kept[i])
  np.testing.assert_array_equal(weights[8], fresh[8])
  np.testing.assert_array_equal(weights[9], fresh[9])
  assert prov.head_reinitialised
  rgb = _write(tmp_path / "rgb.npz", models.initial_weights("small_cnn", (8, 8, 3), 10, seed=1))
  with pytest.raises(init_weights.InitWeightsError, match=r"variable 0 \(conv0/kernel:0\)"):
    init_weights.load(rgb, "small_cnn", SHAPE, 10, seed=0, reinit_head=True)  # not a head


def test_keras_weights_files_load_too(tmp_path):
  model = models.build("small_cnn", SHAPE, 10)
  model.set_weights(models.initial_weights("small_cnn", SHAPE, 10, seed=4))
  model.save_weights(str(tmp_path / "w.weights.h5"))
  model.save(str(tmp_path / "w.keras"))
  for name in ("w.weights.h5", "w.keras"):
    weights, _ = init_weights.load(str(tmp_path / name), "small_cnn", SHAPE, 10, seed=0)
    for got, want in zip(weights, model.get_weights()):
      np.testing.assert_array_equal(got, want)
  with pytest.raises(init_weights.InitWeightsError, match="expected a .npz"):
    (tmp_path / "w.txt").write_text("x")
    init_weights.load(str(tmp_path / "w.txt"), "small_cnn", SHAPE, 10, seed=0)


def test_resume_refuses_other_weights_and_the_summary_records_them(digits, tmp_path):
  path = _write(tmp_path / "w.npz", models.initial_weights("small_cnn", SHAPE, 10, seed=3))
  cfg = configs.TrainConfig(
    setting="fscdp", rounds=2, runtime="in_process", init_weights=path, sampling_prob=0.1
  )
  out = str(tmp_path / "run")
  opts = configs.LoopOptions(checkpoint_every=1, tensorboard=False)
  summary = loop.run(cfg, digits, out, options=opts, log=lambda _: None)
  assert summary["init_weights"]["sha256"] == init_weights.sha256_of(path)
  assert summary["initial_test_accuracy"] is not None
  with open(os.path.join(out, "hparams.json")) as f:
    assert json.load(f)["init_weights_sha256"] == init_weights.sha256_of(path)
  _write(path, models.initial_weights("small_cnn", SHAPE, 10, seed=4))  # same path, new content
  more = configs.LoopOptions(checkpoint_every=1, tensorboard=False, resume=True)
  with pytest.raises(run_dir.RunDirError, match="--init_weights 'sha256:"):
    loop.run(configs.TrainConfig(**{**cfg.__dict__, "rounds": 3}), digits, out, options=more)


def test_a_missing_file_is_refused_before_any_data_is_read():
  cfg = configs.TrainConfig(init_weights="/nonexistent/w.npz")
  with pytest.raises(ValueError, match="no such file"):
    configs.check_compatible(cfg, loaders.DataConfig(dataset="digits"))
  with pytest.raises(ValueError, match="reinit_head.*needs --init_weights"):
    configs.TrainConfig(reinit_head=True)


def test_the_public_source_is_shifted_and_disjoint():
  private, labels = synthetic.make_synthetic_retina(300, image_size=16, seed=0)
  public, public_labels = synthetic.make_synthetic_retina(
    300, image_size=16, seed=0, camera="public"
  )
  assert np.mean(public_labels == 0) > np.mean(labels == 0) + 0.1  # EyePACS: more grade 0
  assert abs(public.mean(axis=(0, 1, 2))[2] - private.mean(axis=(0, 1, 2))[2]) > 0.005
  flat = {im.tobytes() for im in private}
  assert not any(im.tobytes() in flat for im in public)


def test_pretraining_binary_writes_weights_a_private_run_starts_from(tmp_path):
  env = dict(os.environ, DOPAMINE_TFF_CACHE=str(tmp_path / "cache"))
  out = tmp_path / "public" / "w.npz"
  cmd = [
    sys.executable, "-m", "experiments.pretrain_public", "--num_examples=200",
    "--image_size=16", "--epochs=1", f"--output={out}",
  ]  # fmt: skip
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  meta = json.loads((tmp_path / "public" / "w.npz.json").read_text())
  assert meta["sha256"] == init_weights.sha256_of(str(out))
  assert meta["dataset"] == "synthetic_public" and meta["num_train_examples"] > 150
  assert "public weights:" in proc.stdout
  data = loaders.load(
    loaders.DataConfig(dataset="synthetic", num_examples=200, image_size=16, num_hospitals=2)
  )
  cfg = configs.TrainConfig(setting="fscdp", runtime="in_process", init_weights=str(out))
  trainer = trainers.make_trainer(cfg, data, str(tmp_path / "scratch"))
  with np.load(out) as f:
    for i, got in enumerate(trainer.weights(trainer.initial_state())):
      np.testing.assert_array_equal(got, f[f"arr_{i}"])


def test_the_input_scaling_follows_the_weights(tmp_path):
  """ImageNet weights expect (x - mean) / std: a run refuses them with other scaling."""
  path = _write(tmp_path / "w.npz", models.initial_weights("small_cnn", (16, 16, 3), 5, seed=0))
  (tmp_path / "w.npz.json").write_text(json.dumps({"normalization": "imagenet"}))
  cfg = configs.TrainConfig(init_weights=path)
  plain = loaders.DataConfig(dataset="synthetic", num_examples=100, image_size=16, num_hospitals=2)
  with pytest.raises(ValueError, match="pass --normalization=imagenet"):
    configs.check_compatible(cfg, plain)
  imagenet = loaders.DataConfig(**{**plain.__dict__, "normalization": "imagenet"})
  configs.check_compatible(cfg, imagenet)
  a, b = loaders.load(plain), loaders.load(imagenet)
  x01 = (a.test.images + 1.0) / 2.0
  np.testing.assert_allclose(
    b.test.images, (x01 - loaders.IMAGENET_MEAN) / loaders.IMAGENET_STD, rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="needs RGB images"):
    loaders.load(loaders.DataConfig(dataset="digits", normalization="imagenet"))


def test_a_truncated_or_non_finite_weights_file_is_one_line_naming_it(tmp_path):
  """The review: 300 bytes of an .npz were an EOFError traceback; NaN weights
  were accepted and every round was abandoned, epsilon 0, exit 0."""
  good = _write(tmp_path / "good.npz", models.initial_weights("small_cnn", SHAPE, 10, seed=1))
  cut = tmp_path / "cut.npz"
  cut.write_bytes(open(good, "rb").read()[:300])  # noqa: SIM115
  with pytest.raises(init_weights.InitWeightsError, match=r"cut\.npz: not a readable \.npz"):
    init_weights.load(str(cut), "small_cnn", SHAPE, 10, seed=0)
  bad = models.initial_weights("small_cnn", SHAPE, 10, seed=1)
  bad[3] = np.full_like(bad[3], np.nan)
  nan = _write(tmp_path / "nan.npz", bad)
  with pytest.raises(init_weights.InitWeightsError, match=r"variable 3 .* non-finite values"):
    init_weights.load(nan, "small_cnn", SHAPE, 10, seed=0)
