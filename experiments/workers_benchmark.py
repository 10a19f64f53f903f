"""One host's worker against several: FSCDP rounds split across TFF workers.

  python -m experiments.workers_benchmark --output=results/benchmark_workers.json

Starts the workers as separate processes on loopback (dopamine_tff.worker_host,
plain gRPC), each pinned to its share of this host's cores, as if each were a
host of that many cores, and reaches them through the same addresses a
multi-host run uses (`RuntimeConfig.addresses`). The hospitals' data travel
inline in the requests, as they must to workers on other hosts.

Configurations (each K): "1 worker, 1 core" is the one-host baseline; "N
workers, 1 core each" is N such hosts; "1 worker, all cores" is this whole
machine. Their rounds are timed interleaved: every repetition runs each
configuration's rounds in turn (after one untimed round per switch, which
compiles the computation for that context). Reported per configuration: the
median round time over all timed rounds with its [min, max], the speed-up
against the baseline (ratio of medians, and the range of per-repetition
ratios), and the executor-service bytes per round to and from the workers.

The driver (this process: sampling plans, serialization, the merge) runs on
the same cores as the workers: on a 2-core machine it competes with them.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from absl import flags

import dopamine_tff  # noqa: F401  (quietens TensorFlow's C++ logs first)
from dopamine_tff import runtime
from dopamine_tff import worker_host
from dopamine_tff.data import loaders
from experiments import bench_lib
from experiments import cli_lib

flags.DEFINE_list("hospitals", ["100", "1000"], "K values.")
flags.DEFINE_integer("examples_per_hospital", 8, "Synthetic training examples per hospital.")
flags.DEFINE_integer("image_size", 16, "Synthetic image side.")
flags.DEFINE_integer("rounds", 3, "Timed rounds per configuration and repetition.")
flags.DEFINE_integer("repeats", 3, "Repetitions (configurations interleaved in each).")
flags.DEFINE_string(
  "secure_aggregation", "none", "none, secagg or secagg_plus (masks are made by the driver)."
)
flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _configs(cores: list[int]) -> dict[str, list[tuple[int, ...]]]:
  """Name -> the CPU set of each worker."""
  out = {"1 worker, 1 core": [(cores[0],)]}
  for n in range(2, len(cores) + 1):
    out[f"{n} workers, 1 core each"] = [(c,) for c in cores[:n]]
  if len(cores) > 1:
    out[f"1 worker, {len(cores)} cores"] = [tuple(cores)]
  return out


def _bytes(before: dict, after: dict) -> dict:
  sent = sum(after[a]["sent"] - before.get(a, {}).get("sent", 0) for a in after)
  received = sum(after[a]["received"] - before.get(a, {}).get("received", 0) for a in after)
  return {"sent": sent, "received": received}


def bench_k(k: int, values) -> dict:
  cores = sorted(os.sched_getaffinity(0))
  configs = _configs(cores)
  hosts = {
    name: [
      worker_host.Host(worker_host.HostConfig(insecure_transport=True, cpus=cpus)).start()
      for cpus in sets
    ]
    for name, sets in configs.items()
  }
  try:
    first = hosts[next(iter(hosts))]
    runtime.start(runtime.RuntimeConfig(addresses=_addresses(first), data_transport="inline"))
    data_cfg = loaders.DataConfig(
      dataset="synthetic",
      num_hospitals=k,
      num_examples=int(k * values["examples_per_hospital"] / 0.8),
      image_size=values["image_size"],
    )
    trainer = bench_lib.fscdp_trainer(
      data_cfg, model="small_cnn", secure_aggregation=values["secure_aggregation"]
    )
    state, r = trainer.initial_state(), 0
    times = {name: [] for name in configs}
    per_rep = {name: [] for name in configs}
    traffic = {name: [] for name in configs}
    cpu = {name: [] for name in configs}  # (driver, [each worker]) CPU seconds
    for rep in range(values["repeats"]):
      for name, hs in hosts.items():
        runtime.start(runtime.RuntimeConfig(addresses=_addresses(hs), data_transport="inline"))
        state = trainer.run(state, trainer.plan(r), r).state  # compiles for this context
        r += 1
        before = runtime.traffic()
        cpu0 = (time.process_time(), [_cpu_s(h.process.pid) for h in hs])
        rep_times = []
        for _ in range(values["rounds"]):
          t0 = time.perf_counter()
          state = trainer.run(state, trainer.plan(r), r).state
          rep_times.append(time.perf_counter() - t0)
          r += 1
        traffic[name].append(_bytes(before, runtime.traffic()))
        cpu[name].append(
          (
            time.process_time() - cpu0[0],
            [_cpu_s(h.process.pid) - c for h, c in zip(hs, cpu0[1])],
          )
        )
        times[name] += rep_times
        per_rep[name].append(statistics.median(rep_times))
        print(
          f"  K={k} rep {rep + 1} {name}: {statistics.median(rep_times):.3f} s/round", flush=True
        )
  finally:
    runtime.start()
    for hs in hosts.values():
      for h in hs:
        h.close()
  return _summary(k, values, configs, times, per_rep, cpu, traffic)


def _summary(k, values, configs, times, per_rep, cpu, traffic) -> dict:
  """Each configuration's medians, ranges and speed-up against one worker on one core."""
  base = "1 worker, 1 core"
  out = {"hospitals": k, "configs": {}}
  for name in configs:
    med = statistics.median(times[name])
    ratios = [b / t for b, t in zip(per_rep[base], per_rep[name])]
    rounds = values["rounds"]
    out["configs"][name] = {
      "workers": len(configs[name]),
      "cpus": [list(c) for c in configs[name]],
      "round_s_median": med,
      "round_s_range": [min(times[name]), max(times[name])],
      "speedup_vs_1_worker_1_core": statistics.median(per_rep[base]) / med if name != base else 1.0,
      "speedup_range": [min(ratios), max(ratios)],
      "driver_cpu_s_per_round": statistics.median(d / rounds for d, _ in cpu[name]),
      "worker_cpu_s_per_round": [
        statistics.median(w[i] / rounds for _, w in cpu[name]) for i in range(len(configs[name]))
      ],
      "bytes_per_round_sent": statistics.median(t["sent"] / rounds for t in traffic[name]),
      "bytes_per_round_received": statistics.median(t["received"] / rounds for t in traffic[name]),
    }
  return out


def _cpu_s(pid: int) -> float:
  """User + system CPU seconds of process `pid` so far."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _addresses(hs) -> tuple[str, ...]:
  return tuple(f"localhost:{h.port}" for h in hs)


def main(argv):
  del argv
  values = {name: flags.FLAGS[name].value for name in flags.FLAGS}
  if values["output"] and not os.path.isdir(os.path.dirname(os.path.abspath(values["output"]))):
    raise ValueError(f"--output={values['output']}: its directory does not exist")
  ks = [int(k) for k in values["hospitals"]]
  results = {
    "command": "python -m experiments.workers_benchmark "
    + " ".join(
      f"--{n}={values[n] if not isinstance(values[n], list) else ','.join(values[n])}"
      for n in (
        "hospitals",
        "examples_per_hospital",
        "image_size",
        "rounds",
        "repeats",
        "secure_aggregation",
      )
    ),
    "cores": len(os.sched_getaffinity(0)),
    "model": "small_cnn",
    "data_transport": "inline",
    "secure_aggregation": values["secure_aggregation"],
    "by_k": [bench_k(k, values) for k in ks],
  }
  for res in results["by_k"]:
    for name, c in res["configs"].items():
      print(
        f"K={res['hospitals']:5d} {name:24s} {c['round_s_median']:.3f} s/round "
        f"[{c['round_s_range'][0]:.3f}, {c['round_s_range'][1]:.3f}]  speed-up "
        f"{c['speedup_vs_1_worker_1_core']:.2f} [{c['speedup_range'][0]:.2f}, "
        f"{c['speedup_range'][1]:.2f}]  CPU s/round driver {c['driver_cpu_s_per_round']:.2f} "
        f"workers {'+'.join(f'{w:.2f}' for w in c['worker_cpu_s_per_round'])}  "
        f"{c['bytes_per_round_sent'] / 1e6:.1f} MB sent, "
        f"{c['bytes_per_round_received'] / 1e6:.1f} MB received per round"
      )
  if values["output"]:
    with open(values["output"], "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli_lib.run(main, "workers_benchmark")
