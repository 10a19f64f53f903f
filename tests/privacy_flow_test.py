"""The server sees only sums: what leaves a hospital and how.

Inspects the built FSCDP process: the only intrinsic that moves client values
to the server is the secure sum (no federated_sum, federated_mean,
federated_aggregate or federated_collect), and what a hospital hands to it is
already noised.
"""

import math
import re

import numpy as np
import pytest
import tensorflow as tf

from dopamine_tff import dither
from dopamine_tff import models
from dopamine_tff import process
from dopamine_tff import quantization
from dopamine_tff import seeds
from dopamine_tff.program import loop

SHAPE, CLASSES = (8, 8, 1), 4
W0 = models.initial_weights("small_cnn", SHAPE, CLASSES, seed=0)
CLIENT_TO_SERVER = {
  "federated_sum",
  "federated_mean",
  "federated_weighted_mean",
  "federated_aggregate",
  "federated_collect",
  "federated_secure_sum",
  "federated_secure_sum_bitwidth",
  "federated_secure_modular_sum",
  "federated_secure_select",
  "federated_select",
  "federated_min",
  "federated_max",
}


def _model_fn():
  return models.small_cnn(SHAPE, CLASSES)


def _intrinsics(comp) -> set:
  return set(re.findall(r'uri: "([a-z_]+)"', str(comp.to_building_block().proto)))


def test_fscdp_moves_client_values_only_through_secure_sums():
  params = process.DpSgdParams(0.1, 1.0, 0.5, 0.1, 0.9)
  proc = process.build_dp_sgd_process(
    _model_fn, W0, SHAPE, params, quantization.QuantizationConfig(10.0, 8), dither_degree=3
  )
  used = _intrinsics(proc.next)
  assert used & CLIENT_TO_SERVER == {"federated_secure_sum_bitwidth"}, used
  assert "federated_map" in used and "federated_broadcast" in used


def test_the_inspection_can_fail_fedavg_uses_plain_sums():
  proc = process.build_fedavg_process(_model_fn, W0, SHAPE, process.LocalParams(1, 8, 0.1, 0.0))
  assert "federated_sum" in _intrinsics(proc.next)


def test_what_enters_the_secure_sum_is_already_noised(tff_runtime):
  k, sigma, clip = 4, 1.15, 1.0
  share = sigma * clip / math.sqrt(k)
  # q tiny: the Poisson batch is empty, so the hospital's output is its noise.
  params = process.DpSgdParams(1e-9, clip, share, 0.1, 0.0)
  client = process.build_dp_client_computation(_model_fn, W0, SHAPE, params)
  x = np.zeros((10, *SHAPE), np.float32)
  y = np.zeros(10, np.int32)
  ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)  # one element: the whole local set
  noisy_sum, n = client(W0, ds, seeds.client_key(0, 0, 0))
  flat = np.concatenate([np.ravel(v) for v in noisy_sum])
  assert n == 10
  assert flat.std() == pytest.approx(share, rel=0.03)


def _masked_process():
  params = process.DpSgdParams(0.1, 1.0, 0.5, 0.1, 0.9)
  return process.build_masked_dp_sgd_process(
    _model_fn,
    W0,
    SHAPE,
    params,
    quantization.QuantizationConfig(10.0, 8),
    dither_degree=3,
    degree=3,
    prg="chacha20",
  )


def test_secagg_round_sends_only_masked_int64_vectors_and_secure_counts():
  proc = _masked_process()
  used = _intrinsics(proc.masked_round)
  assert used & CLIENT_TO_SERVER == {"federated_sum", "federated_secure_sum_bitwidth"}, used
  # The plain federated_sum carries the masked codes: int64, one per weight.
  masked_type = proc.masked_round.type_signature.result[0]
  assert str(masked_type.member.dtype) == "int64"
  assert masked_type.member.shape == (sum(np.size(w) for w in W0),)


def _chi_square_p(values) -> float:
  from scipy import stats

  raw = np.asarray(values, np.int64).astype("<u4").view(np.uint8)
  return float(stats.chisquare(np.bincount(raw, minlength=256)).pvalue)


def test_a_masked_vector_is_uniform_mod_2_32_whatever_its_input():
  from dopamine_tff.secagg import masking
  from dopamine_tff.secagg import protocol

  proto = protocol.Protocol(protocol.SecAggConfig("secagg", 4))
  proto.start_round(0)
  pk, ps, sk = proto.client_inputs(1)
  n = 50_000
  rng = np.random.default_rng(0)
  # Chosen inputs: all zero, all at the top code, and realistic codes (the
  # noisy update's encoding concentrates around the middle of the range).
  inputs = {
    "zeros": np.zeros(n, np.int64),
    "top": np.full(n, 2**29 - 1, np.int64),
    "realistic": np.int64(2**28) + rng.normal(0, 2**12, n).astype(np.int64),
  }
  for name, codes in inputs.items():
    masked = masking.mask(tf.constant(codes), pk, ps, sk).numpy()
    assert masked.min() >= 0 and masked.max() < 2**32
    assert _chi_square_p(masked) > 1e-4, name
    if name == "realistic":
      assert abs(np.corrcoef(codes, masked)[0, 1]) < 0.03
      # The same test rejects the unmasked codes: it can fail.
      assert _chi_square_p(codes) < 1e-12


def test_many_hospitals_dither_on_a_connected_ring_with_the_same_release(monkeypatch, tmp_path):
  """The pair dithers follow a ring of ~log2 K neighbours, not the complete graph.

  The release must still be the noised total up to rounding: the weights match
  the complete graph's to float precision, and the ring is symmetric and connected.
  """
  import numpy as np

  from dopamine_tff import configs
  from dopamine_tff import graphs
  from dopamine_tff.data import loaders
  from dopamine_tff.secagg import protocol

  assert dither.dither_graph(5, b"r0") == {
    i: tuple(j for j in range(5) if j != i) for i in range(5)
  }
  assert {len(v) for v in dither.dither_graph(10, b"r0").values()} == {4}
  ring = dither.dither_graph(40, b"r0")
  assert {len(v) for v in ring.values()} == {6}
  assert all(i in ring[j] for i in ring for j in ring[i])
  assert dither.dither_graph(40, b"r1") != ring  # a new order every round
  protocol.check_hidden(ring, set(range(40)))  # raises when disconnected
  data = loaders.load(loaders.DataConfig(dataset="digits", num_hospitals=40, num_examples=1200))
  cfg = configs.TrainConfig(
    insecure_seeded_noise=True,  # the same noise in both runs
    setting="fscdp",
    rounds=2,
    sampling_prob=0.2,
    noise_multiplier=1.0,
    l2_norm_clip=1.0,
    learning_rate=0.05,
    runtime="in_process",
    eval_every=2,
  )
  opts = dict(options=configs.LoopOptions(tensorboard=False), log=lambda _: None)
  loop.run(cfg, data, str(tmp_path / "ring"), **opts)
  monkeypatch.setattr(graphs, "dither_degree", lambda k, colluders=0: k - 1)
  loop.run(cfg, data, str(tmp_path / "complete"), **opts)
  a = np.load(tmp_path / "ring" / "final_weights.npz")
  b = np.load(tmp_path / "complete" / "final_weights.npz")
  for key in a.files:
    np.testing.assert_allclose(a[key], b[key], atol=1e-5)
