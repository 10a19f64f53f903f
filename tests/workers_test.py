"""Splitting a round's hospitals across two TFF workers changes nothing."""

import tempfile
import time

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
  mergeable context ran one worker's share after the other's. One worker's
  first call of a round is held for 1.5 s: the other worker's calls must run
  meanwhile (in the old order they all came before it or after it)."""
  rt = runtime.start(runtime.RuntimeConfig(num_workers=2))
  try:
    cfg = configs.TrainConfig(
      setting="fscdp", rounds=2, sampling_prob=0.5, noise_multiplier=1.0, l2_norm_clip=1.0
    )
    trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
    state = trainer.initial_state()
    state = trainer.run(state, trainer.plan(0), 0).state  # compiles for both workers
    slow, other = rt.endpoints
    held = []
    create_value = slow.stub.create_value

    def held_first(request):
      t0 = time.monotonic()
      if not held:
        time.sleep(1.5)
      response = create_value(request)
      held.append((t0, time.monotonic()))
      return response

    slow.stub.create_value = held_first
    since = time.monotonic()
    trainer.run(state, trainer.plan(1), 1)
    t0, t1 = held[0]
    calls = [(s, e) for _, s, e in other.stub.traffic.intervals if s >= since]
    assert calls, "the other worker got no calls"
    assert any(
      s < t1 and t0 < e for s, e in calls
    ), "the other worker's calls all ran before or after the held one: the workers take turns"
  finally:
    runtime.start()
