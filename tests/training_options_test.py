"""EMA of the weights and the learning-rate schedule: values, resume, refusal."""

import os
import shutil

import numpy as np
import pytest

from dopamine_tff import configs
from dopamine_tff import tf_rounds
from dopamine_tff.program import checkpoint
from dopamine_tff.program import loop
from dopamine_tff.program import run_dir
from tests import helpers


def test_cosine_factor():
  f = [float(tf_rounds.lr_factor(t, "cosine", 10)) for t in (0, 5, 10, 20)]
  assert f == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-6)
  assert float(tf_rounds.lr_factor(7, "constant", 10)) == 1.0


def _cfg(**kw):
  # Runs are compared with each other (seeded).
  return helpers.tiny_cfg(**{"rounds": 6, "eval_every": 3, "insecure_seeded_noise": True, **kw})


def _final(out):
  return list(np.load(os.path.join(out, "final_weights.npz")).values())


def test_ema_is_the_average_of_released_weights_and_resumes_exactly(digits, tmp_path):
  quiet = dict(log=lambda _: None)
  opts = configs.LoopOptions(checkpoint_every=1, tensorboard=False)
  plain = str(tmp_path / "plain")
  loop.run(_cfg(), digits, plain, options=opts, **quiet)
  ema_dir = str(tmp_path / "ema")
  loop.run(_cfg(ema_decay=0.9), digits, ema_dir, options=opts, **quiet)
  ema = _final(ema_dir)
  assert not all(np.array_equal(a, b) for a, b in zip(ema, _final(plain)))
  # The EMA run's own state weights are the plain run's (post-processing only).
  arrays = checkpoint.load_latest(os.path.join(ema_dir, "checkpoints")).arrays
  plain_arrays = checkpoint.load_latest(os.path.join(plain, "checkpoints")).arrays
  for a, b in zip(arrays["weights"], plain_arrays["weights"]):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(arrays["ema"], ema):
    np.testing.assert_array_equal(a, b)
  # Resume from round 4: the same EMA as the uninterrupted run.
  for r in (5, 6):
    shutil.rmtree(os.path.join(ema_dir, "checkpoints", f"ckpt_{r:08d}"))
  resumed = loop.run(
    _cfg(ema_decay=0.9),
    digits,
    ema_dir,
    options=configs.LoopOptions(checkpoint_every=1, tensorboard=False, resume=True),
    **quiet,
  )
  assert resumed["rounds_run"] == 6
  for a, b in zip(_final(ema_dir), ema):
    np.testing.assert_array_equal(a, b)


def test_ema_math():
  ema = None
  for t, w in enumerate([10.0, 20.0, 30.0], start=1):
    ema = loop.ema_update(ema, [np.array([w], np.float32)], 0.5, t)
  # t=1 sets 10; t=2: decay min(0.5, 3/12)=0.25 -> 17.5; t=3: min(0.5, 4/13) -> 26.15...
  d3 = 4 / 13
  assert float(ema[0][0]) == pytest.approx(d3 * 17.5 + (1 - d3) * 30.0)


def test_schedule_changes_training_and_pins_the_round_count_on_resume(digits, tmp_path):
  quiet = dict(log=lambda _: None)
  opts = configs.LoopOptions(checkpoint_every=2, tensorboard=False)
  a, b = str(tmp_path / "const"), str(tmp_path / "cos")
  loop.run(_cfg(), digits, a, options=opts, **quiet)
  loop.run(_cfg(lr_schedule="cosine"), digits, b, options=opts, **quiet)
  assert not all(np.array_equal(x, y) for x, y in zip(_final(a), _final(b)))
  with pytest.raises(run_dir.RunDirError, match="--rounds 6 -> 8"):
    loop.run(
      _cfg(lr_schedule="cosine", rounds=8),
      digits,
      b,
      options=configs.LoopOptions(checkpoint_every=2, tensorboard=False, resume=True),
      **quiet,
    )


def test_fedavg_schedule_scales_the_server_step(digits, tmp_path):
  quiet = dict(log=lambda _: None)
  opts = configs.LoopOptions(checkpoint_every=0, tensorboard=False)
  outs = {}
  for schedule in ("constant", "cosine"):
    out = str(tmp_path / schedule)
    cfg = _cfg(setting="f", rounds=3, batch_size=32, local_epochs=1, lr_schedule=schedule)
    loop.run(cfg, digits, out, options=opts, **quiet)
    outs[schedule] = _final(out)
  assert not all(np.array_equal(a, b) for a, b in zip(outs["constant"], outs["cosine"]))


def test_augmentation_is_seeded_label_preserving_and_keeps_sensitivity():
  import tensorflow as tf

  from dopamine_tff import dp_sgd
  from dopamine_tff import models
  from dopamine_tff import seeds

  x = tf.random.stateless_normal([6, 16, 16, 3], [1, 2])
  key = tf.constant(seeds.client_key(0, 3, 1))
  a, b = dp_sgd.augment(x, key), dp_sgd.augment(x, key)
  np.testing.assert_array_equal(a.numpy(), b.numpy())  # stateless: same key, same images
  c = dp_sgd.augment(x, tf.constant(seeds.client_key(0, 4, 1)))
  assert not np.array_equal(a.numpy(), c.numpy())
  assert a.shape == x.shape
  # One example, no noise, q = 1: whatever m, the clipped contribution is at most C.
  model = models.build("small_cnn", (16, 16, 3), 5)
  for m in (0, 1, 4):
    out = dp_sgd.noisy_clipped_sum(
      model,
      x[:1] * 50.0,
      tf.constant([2], tf.int32),
      sampling_prob=1.0,
      l2_norm_clip=0.01,
      noise_stddev=0.0,
      seed=key,
      augmentations=m,
    )
    norm = float(np.sqrt(sum(np.sum(np.square(g.numpy())) for g in out.noisy_sum)))
    assert 0 < norm <= 0.01 * (1 + 1e-5)
