"""Benchmarks secure aggregation: the PRG, a round's overhead, scaling in K, bytes, HE.

  python -m experiments.secagg_benchmark --output=results/benchmark_secagg.json
  python -m experiments.secagg_benchmark --quick --output=/tmp/secagg.json   # smoke

Writes the ``secure_aggregation`` section and its ``ratios`` (a file of its
own beside experiments/benchmark.py's, so that either can be rerun alone).
Every time is a median of --repeats calls after a warm-up, in one process on
one machine:

* The mask PRG: ours (masking.host_stream: OpenSSL's ChaCha20 written into a
  reused buffer) against a bare ``cryptography`` ChaCha20 call, the ChaCha20
  in TF ops and TF's Philox (not cryptographic), timed round-robin, bytes of
  keystream per second.
* One FSCDP round, K=10, on the TFF runtime, without secure aggregation and
  with SecAgg and SecAgg+ (small CNN at 32x32, SqueezeNet at 64x64), the three
  timed round-robin in one process (medians with their range), each round
  with fresh keys, shares and graph.
* Scaling in K (small CNN's 47,493 words): one hospital's cost (key agreement,
  Shamir shares, its mask), the server's measured end to end (a real protocol
  round with 10 % of the hospitals dropped: the senders' masked vectors
  summed, then ``Protocol.unmask``: share reconstruction and mask removal),
  and the bytes each hospital sends.
* The original's approach: BFV homomorphic encryption (TenSEAL) of the same
  codes, encrypt + add + decrypt, and ciphertext expansion.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import flags
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
import numpy as np
import tensorflow as tf

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import profiling
from dopamine_tff import runtime
from dopamine_tff.data import loaders
from dopamine_tff.secagg import chacha
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import protocol
from dopamine_tff.secagg import shamir
from experiments import bench_lib
from experiments import cli_lib

_OUTPUT = flags.DEFINE_string(
  "output", "runs/benchmark_secagg.json", "Where the JSON goes (results/ holds the committed one)."
)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and one repeat (a smoke run).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")

SMALL_CNN_WORDS = 47_493
SQUEEZENET_WORDS = 725_061


def _median(fn, repeats, warmup=1) -> float:
  return profiling.median_seconds(fn, repeats, warmup)


def prg_throughput(words: int, repeats: int) -> dict:
  key, nonce = os.urandom(32), os.urandom(12)
  kw, nw = chacha.key_words(key), chacha.nonce_words(nonce)
  tf_chacha = tf.function(lambda: chacha.keystream_words(kw, nw, words))
  tf_philox = tf.function(lambda: chacha.philox_words(kw, nw, words))
  zeros, buf = bytes(4 * words), np.empty(words, np.uint32)

  def openssl():
    Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor().update(zeros)

  fns = {
    "chacha_host": lambda: masking.host_stream(kw, nw, words, out=buf),
    "chacha_openssl": openssl,
    "chacha_tf": tf_chacha,
    "philox_tf": tf_philox,
  }
  times = profiling.interleaved(fns, max(repeats, 3), 1)
  out = {"bytes": 4 * words}
  for name, t in times.items():
    med = statistics.median(t)
    out[name] = {"median_s": med, "mb_per_s": 4 * words / med / 1e6, "times_s": t}
    print(f"  {name:15s} {out[name]['mb_per_s']:8.1f} MB/s", flush=True)
  return out


def _trainer(model: str, size: int, mode: str, quick: bool):
  data_cfg = loaders.DataConfig(
    dataset="synthetic", num_examples=300 if quick else 3000, image_size=size, num_hospitals=10
  )
  return bench_lib.fscdp_trainer(data_cfg, model=model, sampling_prob=0.05, secure_aggregation=mode)


MODES = ("none", "secagg", "secagg_plus")


def fscdp_rounds(quick: bool, repeats: int) -> dict:
  """Per model: the three modes' rounds, timed round-robin in this process."""
  out = {}
  models = [("small_cnn", 16 if quick else 32)] + ([] if quick else [("squeezenet", 64)])
  for model, size in models:
    steps = {mode: bench_lib.round_step(_trainer(model, size, mode, quick)) for mode in MODES}
    times = profiling.interleaved(steps, repeats, 2)
    for mode, t in times.items():
      med = statistics.median(t)
      out.setdefault(model, {})[mode] = {
        "median_s": med,
        "min_s": min(t),
        "max_s": max(t),
        "times_s": t,
        "image_size": size,
      }
      print(
        f"  FSCDP round K=10 {model:10s} {mode:12s} {med * 1e3:9.1f} ms "
        f"[{min(t) * 1e3:.1f}, {max(t) * 1e3:.1f}] x{len(t)}",
        flush=True,
      )
  return out


def _one_client(cfg: protocol.SecAggConfig, words: int, repeats: int) -> dict:
  """One hospital's per-round protocol cost (and its one-off key setup)."""
  peers = [x25519.X25519PrivateKey.generate().public_key() for _ in range(cfg.degree)]
  mine = x25519.X25519PrivateKey.generate()
  holders = list(range(1, cfg.holders_per_secret + 1))

  def keys():
    return [protocol.pair_key(mine.exchange(p), 3, 0, j + 1) for j, p in enumerate(peers)]

  def shares():
    shamir.split(shamir.bytes_to_int(os.urandom(32)), threshold=cfg.t, holders=holders)

  pair = np.stack(keys()) if cfg.degree else np.zeros([0, 8], np.uint32)
  signs = np.ones(cfg.degree, np.int32)
  self_key = chacha.key_words(os.urandom(32))
  return {
    "key_agreement_s": _median(keys, repeats),
    "shamir_split_s": _median(shares, repeats),
    "masking_s": _median(lambda: masking.host_mask(words, pair, signs, self_key), repeats),
    "streams": cfg.degree + 1,
  }


def _server(cfg: protocol.SecAggConfig, words: int, repeats: int) -> dict:
  """The server's unmasking of one real round, 10 % of the hospitals dropped, end to end.

  A fresh protocol round (keys, shares, graph) for K hospitals; the senders'
  masked vectors (zero codes plus their real masks) are summed; the timed part
  is ``Protocol.unmask``: share reconstruction, the dropped hospitals' pair
  keys, and the removal of every mask stream. The round's setup (every
  hospital's keys and shares) is timed once beside it.
  """
  k = cfg.num_hospitals
  dropped = set(range(0, k, 10))  # every tenth: 10 %
  senders = [h for h in range(k) if h not in dropped]
  proto = protocol.Protocol(cfg)
  t0 = time.perf_counter()
  proto.start_round(0)
  setup_s = time.perf_counter() - t0
  total = np.zeros(words, np.uint32)
  for h in senders:
    total += masking.host_mask(words, *proto.client_inputs(h), cfg.prg)
  masked_sum = total.astype(np.int64)
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    code_sum, stats = proto.unmask(masked_sum, senders=senders, responders=senders)
    times.append(time.perf_counter() - t0)
  if np.any(code_sum):  # zero codes: every mask must cancel or be removed
    raise RuntimeError(f"K={k} {cfg.mode}: the unmasked sum is not the codes' sum")
  graph = proto.graph
  streams = len(senders) + sum(1 for d in dropped for j in graph[d] if j not in dropped)
  return {
    "unmask_s": statistics.median(times),
    "unmask_times_s": times,
    "round_setup_s": setup_s,
    "mask_streams": streams,
    "dropped": len(dropped),
    "revealed_seeds": stats["secagg_revealed_seeds"],
    "revealed_keys": stats["secagg_revealed_keys"],
  }


def bytes_per_hospital(cfg: protocol.SecAggConfig, words: int) -> dict:
  """What one hospital sends in a round (Bonawitz et al.'s four messages), in bytes.

  Advertise: two X25519 public keys (masks and dithers: 32 bytes each). Share:
  to each of its ``degree`` neighbours, two Shamir shares of 256-bit secrets
  (its self-mask key and its private key) in an authenticated ciphertext
  (ChaCha20-Poly1305: 12-byte nonce, 16-byte tag) with the two ids (4 bytes
  each). Masked input: the vector, 4 bytes per word (the codes live mod 2**32).
  Unmask: one 32-byte share per neighbour (of a survivor's self key or a
  dropped hospital's private key). The plain update is 4 bytes per word.
  """
  d = cfg.degree
  advertise = 2 * 32
  share = d * (2 * 32 + 12 + 16 + 2 * 4)
  masked = 4 * words
  unmask = d * 32
  total = advertise + share + masked + unmask
  return {
    "advertise": advertise,
    "shares": share,
    "masked_vector": masked,
    "unmask": unmask,
    "total": total,
    "plain_update": 4 * words,
    "expansion": total / (4 * words),
  }


def scaling(quick: bool, repeats: int) -> dict:
  words = 5_000 if quick else SMALL_CNN_WORDS
  rows = []
  for k in (10, 100) if quick else (10, 100, 1000):
    for mode in ("secagg", "secagg_plus"):
      cfg = protocol.SecAggConfig(mode, k)
      row = {"k": k, "mode": mode, "degree": cfg.degree, "threshold": cfg.t}
      row["client"] = _one_client(cfg, words, max(1, repeats // 2))
      c = row["client"]
      row["client_total_s"] = c["key_agreement_s"] + c["shamir_split_s"] + c["masking_s"]
      row["bytes"] = bytes_per_hospital(cfg, words)
      row["server"] = _server(cfg, words, max(1, repeats // 2))
      rows.append(row)
      server = f"{row['server']['unmask_s']:.3f} s"
      print(
        f"  K={k:5d} {mode:12s} client {row['client_total_s']:.3f} s, server unmask {server}, "
        f"sends {row['bytes']['total'] / 1e3:.1f} kB ({row['bytes']['expansion']:.3f}x)",
        flush=True,
      )
  return {"words": words, "rows": rows}


def _prime_1_mod(m: int, below: int) -> int:
  """The largest prime p < below with p = 1 (mod m) (Miller-Rabin)."""

  def probably_prime(n):
    d, r = n - 1, 0
    while d % 2 == 0:
      d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
      x = pow(a, d, n)
      if x in (1, n - 1):
        continue
      for _ in range(r - 1):
        x = x * x % n
        if x == n - 1:
          break
      else:
        return False
    return True

  p = (below - 1) // m * m + 1
  while not probably_prime(p):
    p -= m
  return p


def homomorphic(words: int, k: int, repeats: int) -> dict:
  """BFV (TenSEAL) sum of K hospitals' mod-2**32 codes: its own time and size.

  No ratio against SecAgg is formed here: the SecAgg side of this section is
  partly an estimate (mask removal), and a ratio divides two measurements of
  the same workload, end to end.
  """
  try:
    import tenseal as ts
  except ImportError:
    return {"error": "tenseal is not installed"}
  degree = 8192
  # The codes live mod 2**32: the plain modulus must carry a sum of K of them
  # exactly (K * 2**32 < 2**37 for K <= 32), and be 1 mod 2n for batching.
  plain_modulus = _prime_1_mod(2 * degree, 2**37)
  assert plain_modulus > k * 2**32
  ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=degree, plain_modulus=plain_modulus)
  rng = np.random.default_rng(0)
  codes = [rng.integers(0, 2**32, words).tolist() for _ in range(k)]
  chunks = [range(i, min(i + degree, words)) for i in range(0, words, degree)]

  def encrypt(vec):
    return [ts.bfv_vector(ctx, [vec[i] for i in c]) for c in chunks]

  def full_round():
    cts = [encrypt(v) for v in codes]
    total = cts[0]
    for other in cts[1:]:
      total = [a + b for a, b in zip(total, other)]
    return [x for t in total for x in t.decrypt()]

  # BFV decrypts to centred residues: reduce modulo the plain modulus.
  out = np.mod(np.array(full_round(), np.int64), plain_modulus)
  if not np.array_equal(out, np.sum(codes, axis=0)):
    raise RuntimeError("the BFV sum differs from the integer sum")
  t = _median(full_round, max(1, repeats // 2), warmup=0)
  ciphertext_bytes = sum(len(c.serialize()) for c in encrypt(codes[0]))
  return {
    "scheme": f"BFV n={degree} t={plain_modulus}",
    "round_s": t,
    "ciphertext_bytes_per_hospital": ciphertext_bytes,
    "plaintext_bytes_per_hospital": 4 * words,
    "expansion": ciphertext_bytes / (4 * words),
  }


def secure_aggregation(quick: bool, repeats: int) -> dict:
  print("secure aggregation:", flush=True)
  prg = prg_throughput(16 * 1024 if quick else 4 * SQUEEZENET_WORDS, repeats)
  rounds = fscdp_rounds(quick, repeats)
  scale = scaling(quick, repeats)
  he = homomorphic(scale["words"], 10, repeats)
  section = {"prg": prg, "fscdp_round_k10": rounds, "scaling": scale, "homomorphic": he}
  ratios = {
    "prg_over_openssl": prg["chacha_host"]["mb_per_s"] / prg["chacha_openssl"]["mb_per_s"],
    "chacha_tf_over_openssl": prg["chacha_tf"]["mb_per_s"] / prg["chacha_openssl"]["mb_per_s"],
  }
  for model, by_mode in rounds.items():
    for mode in ("secagg", "secagg_plus"):
      ratios[f"{mode}_over_plain_round_{model}"] = (
        by_mode[mode]["median_s"] / by_mode["none"]["median_s"]
      )
  section["ratios"] = ratios
  return section


def main(argv):
  del argv
  quick, repeats = _QUICK.value, (1 if _QUICK.value else _REPEATS.value)
  runtime.start()
  try:
    section = secure_aggregation(quick, repeats)
  finally:
    runtime.shutdown()
  result = {
    "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "tf": tf.__version__},
    "quick": quick,
    "repeats": repeats,
    "secure_aggregation": section,
    "ratios": section["ratios"],
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  with open(_OUTPUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(section["ratios"], indent=2))


if __name__ == "__main__":
  cli_lib.run(main, "secagg_benchmark")
