"""--privacy_unit=patient: a patient's images are sampled together and clipped jointly to C."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import accounting
from dopamine_tff import dp_sgd
from dopamine_tff import fast_clip
from dopamine_tff import models
from dopamine_tff import seeds
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_patients_images_are_always_sampled_together():
  groups = tf.constant(np.repeat(np.arange(200), 2), tf.int32)  # two eyes per patient
  picked = []
  for r in range(50):
    key = tf.constant(seeds.client_key(0, r, 0))
    mask = dp_sgd.group_poisson_mask(groups, 0.1, seeds.stream(key, seeds.Purpose.SAMPLE)).numpy()
    pairs = mask.reshape(200, 2)
    assert (pairs[:, 0] == pairs[:, 1]).all()
    picked.append(pairs[:, 0].mean())
  assert abs(np.mean(picked) - 0.1) < 0.02  # patients, not images, are sampled at rate q


def _loop_group_sum(model, x, y, groups, clip):
  """Reference: one example at a time, summed per patient, clipped, summed."""
  per = {}
  for i in range(len(y)):
    with tf.GradientTape() as tape:
      loss = dp_sgd.loss_per_example(model(x[i : i + 1]), y[i : i + 1])
    g = tape.gradient(loss, model.trainable_variables)
    flat = np.concatenate([v.numpy().ravel() for v in g])
    per[int(groups[i])] = per.get(int(groups[i]), 0) + flat
  total, norms = 0, []
  for _, v in sorted(per.items()):
    n = np.linalg.norm(v)
    norms.append(n)
    total = total + v * min(1.0, clip / max(n, 1e-12))
  return total, np.array(norms)


def _slow_model():
  """A model fast_clip does not support (Dense with an activation): the vectorised path."""
  inp = tf.keras.Input((6, 6, 1))
  h = tf.keras.layers.Conv2D(3, 3, activation="relu")(inp)
  h = tf.keras.layers.Flatten()(h)
  out = tf.keras.layers.Dense(5, activation="tanh")(h)
  return tf.keras.Model(inp, out)


@pytest.mark.parametrize("which", ["fast", "vectorised"])
def test_group_clipped_sum_matches_a_per_patient_loop(which):
  tf.keras.utils.set_random_seed(1)
  if which == "fast":
    model = models.build("small_cnn", (16, 16, 3), 5)
    x = tf.random.normal([7, 16, 16, 3])
  else:
    model = _slow_model()
    x = tf.random.normal([7, 6, 6, 1])
  assert fast_clip.supports(model) == (which == "fast")
  y = tf.constant([0, 1, 2, 3, 4, 0, 1], tf.int32)
  groups = tf.constant([5, 5, 9, 2, 2, 2, 7], tf.int32)  # any ids; patients of 1-3 images
  want, norms = _loop_group_sum(model, x.numpy(), y.numpy(), groups.numpy(), 0.5)
  assert norms.max() > 0.5  # clipping is exercised
  got, got_norms = dp_sgd.clipped_group_sum(model, x, y, groups, 0.5)
  flat = np.concatenate([g.numpy().ravel() for g in got])
  np.testing.assert_allclose(flat, want, rtol=2e-4, atol=2e-6)
  # tf.unique numbers groups by first appearance: 5, 9, 2, 7.
  np.testing.assert_allclose(got_norms.numpy(), norms[[1, 3, 0, 2]], rtol=2e-4)


def test_joint_contribution_is_clipped_to_c_where_per_image_clipping_is_not():
  """Two identical images of one patient: each under C, together 2x; the unit is clipped."""
  tf.keras.utils.set_random_seed(2)
  model = models.build("small_cnn", (16, 16, 3), 5)
  x1 = tf.random.normal([1, 16, 16, 3])
  x, y = tf.concat([x1, x1], 0), tf.constant([1, 1], tf.int32)
  _, one = dp_sgd.clipped_group_sum(model, x1, y[:1], tf.constant([0]), 1e9)
  clip = float(one[0]) * 1.5  # above each image's norm, below the patient's (2x)
  per_image, _ = fast_clip.clipped_sum(model, x, y, clip, dp_sgd.loss_per_example)
  per_patient, norms = dp_sgd.clipped_group_sum(model, x, y, tf.constant([3, 3]), clip)

  def norm(gs):
    return float(np.sqrt(sum(np.sum(np.square(g.numpy())) for g in gs)))

  assert norm(per_image) == pytest.approx(2 * float(one[0]), rel=1e-4)  # exceeds C
  assert float(norms[0]) == pytest.approx(2 * float(one[0]), rel=1e-4)
  assert norm(per_patient) == pytest.approx(clip, rel=1e-4)  # the patient adds at most C


def _aptos_with_patients(root, patients=30):
  from tests import aptos_files

  rows = [(f"img{i:03d}", (i // 2) % 5) for i in range(2 * patients)]
  path = aptos_files.write_aptos(root, rows)
  aptos_files.with_columns(path, patient_id=lambda i: f"patient{i // 2}")
  return path


def _run(args, out):
  return helpers.run_binary("run_experiment", *args, output_dir=out)


TINY = [
  "--dataset=aptos",
  "--image_size=16",
  "--num_hospitals=2",
  "--rounds=3",
  "--batch_size=4",
  "--local_epochs=1",
  "--sampling_prob=0.2",
  "--noise_multiplier=1.0",
  "--l2_norm_clip=1.0",
  "--learning_rate=0.05",
  "--privacy_unit=patient",
]


@pytest.mark.parametrize("setting", ["fscdp", "fpdp"])
def test_patient_unit_end_to_end(setting, tmp_path):
  import json

  data = _aptos_with_patients(str(tmp_path / "aptos"))
  out = tmp_path / "run"
  proc = _run([f"--setting={setting}", f"--data_dir={data}", *TINY], out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "privacy unit: patient" in proc.stderr
  summary = json.loads((out / "summary.json").read_text())
  hparams = json.loads((out / "hparams.json").read_text())
  assert hparams["privacy_unit"] == "patient"
  if setting == "fscdp":  # the same accounting in form: q over patients, sigma, steps
    want = accounting.epsilon_of([accounting.StepSpec(0.2, 1.0, 3)], 1e-4)
    assert summary["epsilon"] == pytest.approx(want, rel=1e-9)
  else:  # FPDP: q = B / patients of the hospital, ceil(patients / B) steps per epoch
    steps = [s for ledger in summary["ledgers"].values() for s in ledger["steps"]]
    # 25 training patients (50 images; 1 of each class's 6 patients is test) over
    # 2 hospitals: 12 and 13 patients, so q = 4/12 or 4/13 and 3 or 4 steps an epoch.
    assert {(s["sampling_prob"], s["count"]) for s in steps} <= {(4 / 12, 3), (4 / 13, 4)}
    assert len(steps) >= 3


def test_patient_unit_without_patient_ids_is_one_line(tmp_path):
  proc = _run(["--setting=fscdp", "--dataset=digits", *TINY[2:]], tmp_path / "run")
  assert proc.returncode == 2
  assert "privacy_unit=patient needs patient ids" in proc.stderr.strip().splitlines()[-1]
  refused = _run(
    ["--setting=cdp", "--cdp_impl=tf_privacy", "--dataset=digits", *TINY[2:]], tmp_path
  )
  assert refused.returncode == 2 and "not available with --cdp_impl=tf_privacy" in refused.stderr


def test_patient_unit_is_the_same_in_both_runtimes(tmp_path):
  data = _aptos_with_patients(str(tmp_path / "aptos"))
  finals = {}
  for rt in ("tff", "in_process"):
    out = tmp_path / rt
    proc = _run(
      [
        "--setting=fscdp",
        f"--data_dir={data}",
        *TINY,
        f"--runtime={rt}",
        "--insecure_seeded_noise",
      ],
      out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    finals[rt] = np.load(out / "final_weights.npz")
  for key in finals["tff"].files:
    np.testing.assert_allclose(finals["tff"][key], finals["in_process"][key], atol=1e-5)
