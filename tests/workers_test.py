"""Splitting a round's hospitals across two TFF workers changes nothing."""

import tempfile

import numpy as np
import pytest

from dopamine_tff import configs
from dopamine_tff import runtime
from dopamine_tff import trainers


def _weights(data, setting, num_workers, rounds=3):
  runtime.start(runtime.RuntimeConfig(num_workers=num_workers))
  try:
    cfg = configs.TrainConfig(
      setting=setting,
      rounds=rounds,
      batch_size=16,
      local_epochs=1,
      client_fraction=1.0,
      sampling_prob=0.1,
      noise_multiplier=1.0,
      l2_norm_clip=1.0,
      learning_rate=0.05,
      seed=4,
      insecure_seeded_noise=True,  # one and two workers must draw the same noise
    )
    trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
    state = trainer.initial_state()
    pids = runtime.worker_pids()
    for r in range(rounds):
      outcome = trainer.run(state, trainer.plan(r), r)
      state, measurements = outcome.state, outcome.measurements
    return trainer.weights(state), measurements, pids
  finally:
    runtime.start()  # back to the single-worker runtime of the other tests


def test_two_workers_give_the_same_dopamine_weights(data, tff_runtime):
  one, m1, pids1 = _weights(data, "fscdp", 1)
  two, m2, pids2 = _weights(data, "fscdp", 2)
  assert len(pids1) == 1 and len(pids2) == 2
  for a, b in zip(one, two):
    np.testing.assert_array_equal(a, b)  # integer secure sums merge exactly
  assert m1["secure_summands"] == m2["secure_summands"] == 4


def test_two_workers_fedavg_agrees_to_float_rounding(data, tff_runtime):
  one, _, _ = _weights(data, "f", 1)
  two, _, _ = _weights(data, "f", 2)
  for a, b in zip(one, two):
    np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-6
    )  # partial float sums merge in another order


def test_bad_worker_counts():
  with pytest.raises(ValueError, match="num_workers"):
    runtime.RuntimeConfig(num_workers=0)
  with pytest.raises(ValueError, match="cannot be combined"):
    runtime.RuntimeConfig(num_workers=2, addresses=("localhost:1",))


def test_two_workers_compute_their_shares_at_the_same_time(data, tff_runtime):
  """TFF's RemoteExecutor blocks the event loop in its gRPC calls, so the
  mergeable context ran one worker's share after the other's: no call on one
  worker ever overlapped a call on the other."""
  rt = runtime.start(runtime.RuntimeConfig(num_workers=2))
  try:
    cfg = configs.TrainConfig(
      setting="fscdp", rounds=2, sampling_prob=0.5, noise_multiplier=1.0, l2_norm_clip=1.0
    )
    trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
    state = trainer.initial_state()
    for r in range(2):
      state = trainer.run(state, trainer.plan(r), r).state
    a, b = rt.call_intervals().values()
    computes = [[(t0, t1) for name, t0, t1 in calls if name == "compute"] for calls in (a, b)]
    assert computes[0] and computes[1]
    overlaps = [
      (s0, e0, s1, e1) for s0, e0 in computes[0] for s1, e1 in computes[1] if s0 < e1 and s1 < e0
    ]
    assert overlaps, "the two workers' computations never ran at the same time"
  finally:
    runtime.start()
