"""The in-process runtime gives the TFF runtime's weights, for every setting.

Both run the same TF functions and the same integer secure sum. They agree to
float32 rounding, not bit for bit: the TFF worker is a separately built
TensorFlow whose kernels round differently in the last place (seen: at most
~2e-7 absolute after 3 rounds on digits).
"""

import tempfile

import numpy as np
import pytest

from dopamine_tff import configs
from dopamine_tff import trainers


def _weights_after(data, setting, runtime_kind, rounds=3, built=None):
  cfg = configs.TrainConfig(
    setting=setting,
    rounds=rounds,
    batch_size=16,
    local_epochs=1,
    sampling_prob=0.1,
    noise_multiplier=1.0,
    l2_norm_clip=1.0,
    learning_rate=0.05,
    runtime=runtime_kind,
    seed=7,
    insecure_seeded_noise=True,  # both runtimes must draw the same noise
  )
  trainer = trainers.make_trainer(cfg, data, tempfile.mkdtemp())
  if built is not None:
    built.append(trainer)
  state = trainer.initial_state()
  out = []
  for r in range(rounds):
    outcome = trainer.run(state, trainer.plan(r), r)
    state = outcome.state
    out.append((trainer.weights(state), outcome.measurements))
  return out


@pytest.mark.parametrize("setting", ["c", "cdp", "f", "fpdp", "fscdp"])
def test_same_weights_in_both_runtimes(setting, data, tff_runtime):
  tff_out = _weights_after(data, setting, "tff")
  local_out = _weights_after(data, setting, "in_process")
  for (w_tff, m_tff), (w_local, m_local) in zip(tff_out, local_out):
    for a, b in zip(w_tff, w_local):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert m_tff.get("secure_clipped_count") == m_local.get("secure_clipped_count")
    assert m_tff.get("secure_summands") == m_local.get("secure_summands")
  # And training moved the weights, so the comparison is not vacuous.
  first, last = tff_out[0][0], tff_out[-1][0]
  assert any(not np.allclose(a, b) for a, b in zip(first, last))


@pytest.mark.parametrize("setting", ["f", "fpdp", "fscdp"])
def test_client_step_is_traced_once_over_rounds_and_hospitals(setting, data):
  # Every hospital's data and every round's Poisson batch differ in size; the
  # client computation must still be traced once (a retrace costs seconds).
  built = []
  _weights_after(data, setting, "in_process", rounds=3, built=built)
  process = built[0].round
  process = getattr(process, "computations", process)  # FSCDP's SecAgg wraps the twin
  assert process._client.experimental_get_tracing_count() == 1  # noqa: SLF001
