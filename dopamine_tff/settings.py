"""The paper's five settings as trainers with one interface.

A trainer owns its TFF process (or, for TF Privacy's CDP baseline, a Keras
model) and the hospitals' data pipelines. Per round, ``plan`` says which
hospitals take part and what privacy each party spends (StepSpecs, one ledger
per party), and ``run`` executes the round. The training loop
(dopamine_tff/training_loop.py) checks the budget between the two.

Parties: Dopamine and CDP protect every patient with one central-DP-SGD-like
guarantee ("all"). In FPDP each hospital's data is protected only by its own
noise and steps, so each hospital is a party with its own ledger; the run
reports the worst.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from dopamine_tff import accounting
from dopamine_tff import configs
from dopamine_tff import dp_sgd
from dopamine_tff import inprocess
from dopamine_tff import models
from dopamine_tff import process
from dopamine_tff import quantization
from dopamine_tff import seeds
from dopamine_tff.data import loaders
from dopamine_tff.secagg import protocol as secagg_protocol
from dopamine_tff.secagg import rounds as secagg_rounds

ALL = "all"
COLLUDERS = "colluders"  # the same patients, against a server with c colluding hospitals


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """Who takes part in a round and the DP steps each party will take."""

  clients: tuple[int, ...]
  steps: dict  # party name -> accounting.StepSpec
  skipped: bool = False  # too few survivors: nothing is computed or released
  dropped: tuple[int, ...] = ()
  unmask_dropped: tuple[int, ...] = ()  # secure aggregation: gone before unmasking


def patient_ids(s: loaders.ImageSet) -> np.ndarray:
  """Dense patient ids 0..P-1 of a hospital's examples (ValueError when the data has none)."""
  if s.patients is None:
    raise ValueError(
      "privacy_unit=patient needs patient ids: EyePACS file names, or a patient_id column "
      "in the APTOS-format train.csv (synthetic, digits and plain APTOS have none)"
    )
  return np.unique(s.patients, return_inverse=True)[1].astype(np.int32)


def write_shards(
  sets: list[loaders.ImageSet], directory: str, with_groups: bool = False
) -> list[str]:
  """Writes each hospital's arrays to one file; returns the paths.

  TFF then ships only a path per hospital and round; the worker reads the file.
  With ``with_groups`` a third record holds the dense patient id per example.
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  for k, s in enumerate(sets):
    path = os.path.join(directory, f"hospital_{k:04d}.tfrec")
    records = [s.images, s.labels] + ([patient_ids(s)] if with_groups else [])
    tmp = path + ".tmp"
    with tf.io.TFRecordWriter(tmp) as w:
      for array in records:
        w.write(tf.io.serialize_tensor(tf.constant(array)).numpy())
    os.replace(tmp, path)
    paths.append(path)
  return paths


def hospital_dataset(path: str, image_shape, with_groups: bool = False) -> tf.data.Dataset:
  """One element: the hospital's (images [N,H,W,C], labels [N][, patient ids [N]])."""

  def parse(records):
    x = tf.io.parse_tensor(records[0], tf.float32)
    y = tf.io.parse_tensor(records[1], tf.int32)
    out = (tf.ensure_shape(x, [None, *image_shape]), tf.ensure_shape(y, [None]))
    if with_groups:
      out = (*out, tf.ensure_shape(tf.io.parse_tensor(records[2], tf.int32), [None]))
    return out

  return tf.data.TFRecordDataset(path).batch(3 if with_groups else 2).map(parse)


# Up to this many hospitals the pair dithers use the complete graph; above it a
# Harary ring of about log2 K neighbours over an order drawn afresh each round:
# the finite-precision argument needs only a connected graph, and the complete
# one costs K^2 model-length dither streams a round (measured: a K=100 round 6x
# slower).
DENSE_DITHER_MAX = 32


def dither_degree(k: int) -> int:
  """Dither partners per hospital of the plain secure sum."""
  if k <= DENSE_DITHER_MAX:
    return k - 1
  wanted = 2 * math.ceil(math.log2(k) / 2)
  return min(wanted + wanted % 2, k - 1)


def dither_graph(k: int, order_seed: bytes) -> dict[int, tuple[int, ...]]:
  """Hospital -> its dither partners: complete up to DENSE_DITHER_MAX, else a
  Harary ring over the order keyed by `order_seed` (drawn per round)."""
  if k <= DENSE_DITHER_MAX:
    return {i: tuple(j for j in range(k) if j != i) for i in range(k)}
  return secagg_protocol.harary_graph(k, dither_degree(k), order_seed)


class TffTrainer:
  """Shared machinery of the trainers that run a TFF iterative process."""

  def __init__(self, cfg: configs.TrainConfig, sets, image_shape, num_classes, work_dir):
    self.cfg = cfg
    self.sizes = [len(s) for s in sets]
    self.image_shape = image_shape
    self.model_fn = lambda: models.build(cfg.model, image_shape, num_classes)
    self.initial_weights = models.initial_weights(cfg.model, image_shape, num_classes, cfg.seed)
    self.patient_unit = cfg.private and cfg.privacy_unit == "patient"
    # Secret keys: OS CSPRNG unless --insecure_seeded_noise (dopamine_tff/seeds.py).
    self.randomness = cfg.randomness
    # Sampling units per hospital: examples, or patients for the patient unit.
    self.units = [len(np.unique(patient_ids(s))) if self.patient_unit else len(s) for s in sets]
    paths = write_shards(sets, os.path.join(work_dir, "shards"), self.patient_unit)
    self.datasets = [hospital_dataset(p, image_shape, self.patient_unit) for p in paths]
    self.process = self.build()

  def build(self):
    raise NotImplementedError

  def initial_state(self):
    return self.process.initialize()

  def run(self, state, plan: RoundPlan, round_num: int):
    data = [self.datasets[k] for k in plan.clients]
    keys = [self.randomness.client_key(round_num, k) for k in plan.clients]
    state, measurements = self.process.next(state, data, keys)
    if isinstance(state, dict):  # the mergeable (multi-worker) context returns dicts
      state = process.ServerState(**state)
    return state, dict(measurements or {})

  @staticmethod
  def weights(state) -> list[np.ndarray]:
    return [np.asarray(w) for w in state.weights]

  @staticmethod
  def state_arrays(state) -> dict[str, list[np.ndarray]]:
    """The state as named lists of arrays (for checkpoints)."""
    return {
      "weights": [np.asarray(w) for w in state.weights],
      "velocity": [np.asarray(v) for v in state.velocity],
      "round_num": [np.asarray(state.round_num, np.int32)],
    }

  @staticmethod
  def state_from_arrays(arrays) -> process.ServerState:
    return process.ServerState(
      list(arrays["weights"]),
      list(arrays.get("velocity", [])),
      np.int32(arrays["round_num"][0]),
    )

  def describe(self) -> str:
    return (
      f"{type(self).__name__} ({self.cfg.runtime} runtime): {len(self.sizes)} hospitals, "
      f"sizes {self.sizes}"
      + (f"; privacy unit: patient ({self.units} patients)" if self.patient_unit else "")
    )


class DpSgdTrainer(TffTrainer):
  """FSCDP (Dopamine, K hospitals) and CDP with our process (K=1)."""

  def build(self):
    cfg = self.cfg
    k = len(self.sizes)
    self.min_survivors = cfg.min_surviving_hospitals or k
    if self.min_survivors > k:
      raise ValueError(
        f"min_surviving_hospitals={self.min_survivors} exceeds the {k} hospitals of this setting"
      )
    # Noise provisioning: a share sized for M survivors (M = K without dropouts),
    # and for M - c of them when the c assumed colluders' shares are paid for.
    self.provisioned = self.min_survivors - (cfg.assumed_colluders * cfg.provision_for_colluders)
    if self.provisioned < 1:
      raise ValueError(
        f"provision_for_colluders: {cfg.assumed_colluders} colluders leave no honest "
        f"hospital among the {self.min_survivors} provisioned"
      )
    share = cfg.noise_multiplier * cfg.l2_norm_clip / math.sqrt(self.provisioned)
    dim = int(sum(np.size(w) for w in self.initial_weights))
    # The sum's noise is largest when every hospital delivers.
    self.sum_noise_std = share * math.sqrt(k)
    bound = cfg.secure_sum_bound or quantization.default_bound(
      l2_norm_clip=cfg.l2_norm_clip,
      num_examples=sum(self.sizes),
      sampling_prob=cfg.sampling_prob,
      noise_std=self.sum_noise_std,
      dim=dim,
      max_summands=k,
    )
    self.secure_sum = quantization.QuantizationConfig(bound, max_summands=k)
    self.overflow_per_round = quantization.overflow_probability(
      self.secure_sum,
      l2_norm_clip=cfg.l2_norm_clip,
      num_examples=sum(self.sizes),
      sampling_prob=cfg.sampling_prob,
      noise_std=self.sum_noise_std,
      dim=dim,
    )
    params = process.DpSgdParams(
      cfg.sampling_prob,
      cfg.l2_norm_clip,
      share,
      cfg.learning_rate,
      cfg.momentum,
      self.patient_unit,
      cfg.lr_schedule,
      cfg.rounds,
      cfg.augmentations,
      cfg.noise_draws,
    )
    self._dither = tf.function(quantization.dither)
    if cfg.secure_aggregation != "none":
      return self._build_secure(params)
    builder = (
      inprocess.InProcessDpSgd if cfg.runtime == "in_process" else process.build_dp_sgd_process
    )
    return builder(
      self.model_fn,
      self.initial_weights,
      self.image_shape,
      params,
      self.secure_sum,
      dither_degree=dither_degree(k) if k > 1 else 0,
    )

  def _build_secure(self, params):
    cfg = self.cfg
    sa = cfg.secagg_config(len(self.sizes))
    builder = (
      inprocess.InProcessMaskedDpSgd
      if cfg.runtime == "in_process"
      else process.build_masked_dp_sgd_process
    )
    protocol = secagg_protocol.Protocol(sa, self.randomness)
    computations = builder(
      self.model_fn,
      self.initial_weights,
      self.image_shape,
      params,
      self.secure_sum,
      dither_degree=sa.degree,
      degree=sa.degree,
      prg=sa.prg,
    )
    self.secagg = sa
    return secagg_rounds.SecureDpSgd(computations, protocol, self._correction)

  @property
  def _words(self) -> int:
    return int(sum(np.size(w) for w in self.initial_weights))

  def _correction(self, lost) -> np.ndarray:
    """The sum of the pair dithers `lost` [(key, sign)] that no longer cancel."""
    if not lost:  # everyone delivered: the dithers cancel, nothing to remove
      return np.zeros(self._words)
    return self._dither(
      tf.constant(np.reshape([key for key, _ in lost], [-1, 2]), tf.int64),
      tf.constant(np.array([sign for _, sign in lost], np.int32)),
      self._words,
    ).numpy()

  def dither_inputs(self, round_num: int, senders) -> tuple[list, list, np.ndarray]:
    """The plain secure sum's pair dithers: each sender's keys and signs, and the
    server's correction.

    The round's graph and pair keys are fresh secrets (dopamine_tff/seeds.py).
    The correction is the sum of the pair dithers that senders share with
    participants that did not deliver (they no longer cancel).

    Raises:
      RoundAborted: the senders' dither graph is disconnected (the release
        would then depend on more than the noised total).
    """
    k = len(self.sizes)
    rnd, alive = self.randomness, set(senders)
    graph = dither_graph(k, rnd.secret_bytes(round_num, seeds.Purpose.SECAGG_GRAPH, -1))
    pair = rnd.pair_keys(round_num, [(i, j) for i in senders for j in graph[i]])
    keys, signs, lost = [], [], []
    for i in senders:
      near = graph[i]
      keys.append(np.array([pair[min(i, j), max(i, j)] for j in near], np.int64).reshape(-1, 2))
      signs.append(np.array([1 if i < j else -1 for j in near], np.int32))
      lost += [(key, sign) for j, key, sign in zip(near, keys[-1], signs[-1]) if j not in alive]
    secagg_protocol.check_hidden(graph, alive)
    return keys, signs, self._correction(lost)

  def run(self, state, plan: RoundPlan, round_num: int):
    data = [self.datasets[k] for k in plan.clients]
    keys = [self.randomness.client_key(round_num, k) for k in plan.clients]
    try:
      if self.cfg.secure_aggregation == "none":
        dkeys, dsigns, correction = self.dither_inputs(round_num, plan.clients)
        new_state, measurements = self.process.next(state, correction, data, keys, dkeys, dsigns)
        if int(measurements["secure_clipped_count"]):
          raise secagg_protocol.UpdateNotEncodable(
            f"{int(measurements['secure_clipped_count'])} hospital(s) had a non-finite or "
            "out-of-range update; the round is abandoned"
          )
        state = new_state
      else:
        responders = [h for h in plan.clients if h not in plan.unmask_dropped]
        state, measurements = self.process.next(
          state,
          data,
          keys,
          round_num=round_num,
          senders=list(plan.clients),
          responders=responders,
        )
    except secagg_protocol.RoundAborted as e:
      flagged = int(isinstance(e, secagg_protocol.UpdateNotEncodable))
      return state, {"aborted": f"secure aggregation aborted: {e}", "secure_clipped_count": flagged}
    if isinstance(state, dict):  # the mergeable (multi-worker) context returns dicts
      state = process.ServerState(**state)
    return state, dict(measurements or {})

  def epochs(self, rounds_done: int) -> float:
    return self.cfg.epochs_after(rounds_done)

  def plan(self, round_num: int) -> RoundPlan:
    """All hospitals minus this round's dropouts; the noise actually added.

    With K' survivors each adding sigma*C/sqrt(M), the sum carries noise
    sigma*C*sqrt(K'/M): that, not the nominal sigma, is the round's event.
    """
    k = len(self.sizes)
    dropped = self.cfg.dropped(round_num, k) if self.cfg.setting == "fscdp" else set()
    survivors = tuple(h for h in range(k) if h not in dropped)
    # Without provisioning, any survivor count proceeds (with less noise).
    if len(survivors) < (self.cfg.min_surviving_hospitals or 1):
      return RoundPlan(survivors, {}, skipped=True, dropped=tuple(sorted(dropped)))
    q, c = self.cfg.sampling_prob, self.cfg.assumed_colluders
    steps = {ALL: accounting.StepSpec(q, self._sigma(len(survivors)))}
    if c:  # the server knows c shares: only the others' noise protects
      steps[COLLUDERS] = accounting.StepSpec(q, self._sigma(max(len(survivors) - c, 0)))
    late = tuple(sorted(self.cfg.unmask_dropped(round_num, survivors)))
    return RoundPlan(survivors, steps, dropped=tuple(sorted(dropped)), unmask_dropped=late)

  def _sigma(self, unknown_shares: int) -> float:
    """Noise multiplier of a sum holding `unknown_shares` shares unknown to the server."""
    return self.cfg.noise_multiplier * math.sqrt(unknown_shares / self.provisioned)

  def parties(self) -> list[str]:
    return [ALL, COLLUDERS] if self.cfg.assumed_colluders else [ALL]

  def describe(self) -> str:
    text = (
      super().describe()
      + "; "
      + self.secure_sum.describe()
      + f"; overflow probability per round <= {self.overflow_per_round:.2g}"
    )
    if self.cfg.secure_aggregation != "none":
      sa = self.secagg
      g = sa.guarantee.to_json()
      text += (
        f"; {sa.mode}: {sa.degree} neighbours per hospital"
        + (" (complete graph)" if sa.complete else " (Harary graph, new every round)")
        + f", Shamir threshold {sa.t} of {sa.holders_per_secret}, fresh keys every round, "
        f"PRG {sa.prg}"
        + (
          ""
          if sa.complete
          else f", exposure probability <= 2^{g['security_failure_log2']} for "
          f"adversarial fraction {sa.adversarial_fraction}, dropout rate {sa.dropout_rate}"
        )
        + (" (INSECURE: Philox is not a cryptographic PRG)" if sa.prg != "chacha20" else "")
      )
    return text


class FedAvgTrainer(TffTrainer):
  """F (FedAvg), FPDP (local DP-SGD, full noise) and C (K=1, E=1, all data)."""

  def build(self):
    cfg = self.cfg
    dp = cfg.noise_multiplier if cfg.setting == "fpdp" else None
    epochs = 1 if cfg.setting == "c" else cfg.local_epochs
    params = process.LocalParams(
      epochs,
      cfg.batch_size,
      cfg.learning_rate,
      cfg.momentum,
      dp,
      cfg.l2_norm_clip,
      self.patient_unit,
      cfg.lr_schedule,
      cfg.rounds,
      cfg.augmentations,
      cfg.noise_draws,
    )
    self.local = params
    builder = (
      inprocess.InProcessFedAvg if cfg.runtime == "in_process" else process.build_fedavg_process
    )
    return builder(self.model_fn, self.initial_weights, self.image_shape, params)

  def epochs(self, rounds_done: int) -> float:
    return self.cfg.epochs_after(rounds_done)

  def plan(self, round_num: int) -> RoundPlan:
    k = len(self.sizes)
    chosen = self.cfg.selected(round_num, k)
    dropped = self.cfg.dropped(round_num, k) if self.cfg.setting != "c" else set()
    clients = tuple(c for c in chosen if c not in dropped)
    if not clients:
      return RoundPlan((), {}, skipped=True, dropped=tuple(sorted(dropped)))
    steps = {}
    if self.cfg.setting == "fpdp":
      for c in clients:
        # Units: examples, or patients for the patient unit.
        q, count = self.cfg.fpdp_steps(self.units[c])
        steps[str(c)] = accounting.StepSpec(q, self.cfg.noise_multiplier, count)
    return RoundPlan(clients, steps, dropped=tuple(sorted(dropped)))

  def parties(self) -> list[str]:
    return [str(k) for k in range(len(self.sizes))] if self.cfg.setting == "fpdp" else []


class TfPrivacyCdpTrainer:
  """CDP with TF Privacy's own VectorizedDPKerasSGDOptimizer (the baseline).

  Differences from ours (documented in README): Keras iterates over shuffled
  fixed-size batches rather than Poisson samples, and the optimizer divides the
  noisy sum by the realised batch size. Accounting follows TF Privacy's
  convention (Poisson q = B/N, N/B steps per epoch). One round is one epoch.
  """

  def __init__(self, cfg, sets, image_shape, num_classes, work_dir):
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras_vectorized

    del work_dir
    self.cfg = cfg
    pooled = loaders.ImageSet(
      np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets])
    )
    self.data = pooled
    tf.keras.utils.set_random_seed(cfg.seed)
    self.model = models.build(cfg.model, image_shape, num_classes)
    self.model.set_weights(models.initial_weights(cfg.model, image_shape, num_classes, cfg.seed))
    opt = dp_optimizer_keras_vectorized.VectorizedDPKerasSGDOptimizer(
      l2_norm_clip=cfg.l2_norm_clip,
      noise_multiplier=cfg.noise_multiplier,
      num_microbatches=None,
      learning_rate=cfg.learning_rate,
      momentum=cfg.momentum,
    )
    loss = tf.keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction=tf.losses.Reduction.NONE
    )
    self.model.compile(optimizer=opt, loss=loss)
    self.optimizer = opt
    self._traced = False
    self.sizes = [len(pooled)]

  def initial_state(self):
    return {"weights": models_weights(self.model), "optimizer": []}

  def epochs(self, rounds_done: int) -> float:
    return self.cfg.epochs_after(rounds_done)

  def plan(self, round_num: int) -> RoundPlan:
    n = len(self.data)
    b = self.cfg.batch_size
    return RoundPlan(
      (0,), {ALL: accounting.StepSpec(min(1.0, b / n), self.cfg.noise_multiplier, n // b)}
    )

  def parties(self) -> list[str]:
    return [ALL]

  def epoch_global_seed(self, round_num: int) -> int | None:
    """TF's global seed when this process first traces, at epoch `round_num`.

    TF Privacy draws its noise with ``tf.random.normal`` from op kernels whose
    Philox streams are fixed when the train function is traced and advance as
    it runs. With secret randomness (the default) no global seed is set
    (None): each kernel then seeds itself with 128 bits from the OS, so a
    resumed process draws fresh noise. In the insecure seeded mode a process
    traces under a seed of the first epoch it runs (a resumed run never
    replays its predecessor's stream): consecutive from a hashed base, modulo
    TF's 2**31 - 1, distinct for every epoch of a run.
    """
    if not self.cfg.insecure_seeded_noise:
      return None
    base = seeds.host_int(self.cfg.seed, 0, seeds.Purpose.TFP_EPOCH, bits=31)
    return (base + round_num) % (2**31 - 1)

  def run(self, state, plan, round_num):
    del plan
    self.model.set_weights(state["weights"])
    if state["optimizer"] and not self._traced:  # momentum saved in a checkpoint
      self.optimizer._create_all_weights(self.model.trainable_variables)  # noqa: SLF001
      self.optimizer.set_weights(list(state["optimizer"]))
    if not self._traced:
      tf.random.set_seed(self.epoch_global_seed(round_num))
      self.model.make_train_function(force=True)
      self._traced = True
    b = self.cfg.batch_size
    rng = self.cfg.randomness.rng(round_num, seeds.Purpose.TFP_EPOCH)
    order = rng.permutation(len(self.data))
    n = (len(order) // b) * b  # the optimizer needs full batches
    idx = order[:n]
    self.model.fit(
      self.data.images[idx], self.data.labels[idx], batch_size=b, epochs=1, shuffle=False, verbose=0
    )
    new_state = {
      "weights": models_weights(self.model),
      "optimizer": [np.asarray(v) for v in self.optimizer.get_weights()],
    }
    return new_state, {}

  @staticmethod
  def weights(state):
    return state["weights"]

  @staticmethod
  def state_arrays(state):
    # The optimizer's momentum is saved; the noise needs no state: a resumed
    # run draws from a stream keyed by its resume round (epoch_global_seed).
    return {"weights": list(state["weights"]), "optimizer": list(state["optimizer"])}

  @staticmethod
  def state_from_arrays(arrays):
    return {"weights": list(arrays["weights"]), "optimizer": list(arrays.get("optimizer", []))}

  def describe(self) -> str:
    return f"TF Privacy VectorizedDPKerasSGDOptimizer on {len(self.data)} pooled examples"


def models_weights(model) -> list[np.ndarray]:
  return [v.numpy() for v in model.trainable_variables]


def make_trainer(cfg: configs.TrainConfig, data: loaders.FederatedData, work_dir: str):
  """Builds the trainer of `cfg.setting` over `data`."""
  central = cfg.setting in ("c", "cdp")
  sets = [data.pooled()] if central else list(data.hospitals)
  args = (cfg, sets, data.image_shape, data.num_classes, work_dir)
  if cfg.setting == "cdp" and cfg.cdp_impl == "tf_privacy":
    return TfPrivacyCdpTrainer(*args)
  if cfg.setting in ("cdp", "fscdp"):
    return DpSgdTrainer(*args)
  return FedAvgTrainer(*args)


def evaluate(
  model: tf.keras.Model, weights, images: np.ndarray, labels: np.ndarray, batch: int = 512
):
  """(mean loss, accuracy) of `weights` on a set, in this process."""
  dp_sgd.assign_weights(model, weights)
  total_loss, correct = 0.0, 0
  for i in range(0, len(labels), batch):
    logits = model(images[i : i + batch], training=False)
    total_loss += float(tf.reduce_sum(dp_sgd.loss_per_example(logits, labels[i : i + batch])))
    correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == labels[i : i + batch]))
  n = max(len(labels), 1)
  return total_loss / n, correct / n
