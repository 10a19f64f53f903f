"""Serves a TFF worker on this host for drivers elsewhere (run_experiment
--worker_addresses=host:port,...).

  # TLS (the default for another host's driver); the driver passes --worker_tls_ca=ca.pem
  python -m experiments.tff_worker --port=8000 --tls_cert=worker.pem --tls_key=worker.key
  # plain gRPC, e.g. on loopback or a network you trust
  python -m experiments.tff_worker --port=8000 --insecure_transport

Prints one line when it serves, and stops cleanly (exit 0) on SIGTERM or
Ctrl-C. A worker that dies by itself ends it with exit 1 and a line naming
its log. Does not import TensorFlow.
"""

from __future__ import annotations

import signal
import sys

from absl import app
from absl import flags

from dopamine_tff import worker_host

BINARY = "tff_worker"

flags.DEFINE_integer("port", 8000, "Port drivers connect to (0: a free one, printed).")
flags.DEFINE_string("bind", "[::]", "Interface the TLS proxy listens on ([::]: all).")
flags.DEFINE_integer("max_concurrent_calls", -1, "Worker: max concurrent client calls (<=0: none).")
flags.DEFINE_string("worker_binary", None, "Worker binary (e.g. a CUDA build); default TFF's.")
flags.DEFINE_string("log_file", None, "The worker's log (default: in the temp directory).")
flags.DEFINE_string("tls_cert", None, "PEM certificate chain served over TLS.")
flags.DEFINE_string("tls_key", None, "PEM private key of --tls_cert.")
flags.DEFINE_string("client_ca", None, "PEM CA for client certificates: given, they are required.")
flags.DEFINE_bool(
  "insecure_transport", False, "Serve plain gRPC: the hospitals' data cross the network in clear."
)
flags.DEFINE_bool(
  "isolate",
  True,
  "TLS mode: run the worker in its own network namespace, so its plain port is unreachable.",
)
flags.DEFINE_string("cpus", "", "CPUs the worker may use, e.g. 0-3 (default: all).")


def config_from(values) -> worker_host.HostConfig:
  return worker_host.HostConfig(
    port=values["port"],
    bind=values["bind"],
    max_concurrent_computation_calls=values["max_concurrent_calls"],
    worker_binary=values["worker_binary"],
    log_path=values["log_file"],
    tls_cert=values["tls_cert"],
    tls_key=values["tls_key"],
    client_ca=values["client_ca"],
    insecure_transport=values["insecure_transport"],
    isolate=values["isolate"],
    cpus=worker_host.parse_cpus(values["cpus"]),
  )


def main(argv):
  if len(argv) > 1:
    print(f"{BINARY}: error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  values = {name: flags.FLAGS[name].value for name in flags.FLAGS}
  try:
    host = worker_host.Host(config_from(values))
    signal.signal(signal.SIGTERM, host.stop)
    signal.signal(signal.SIGINT, host.stop)
    host.start()
  except (ValueError, RuntimeError) as e:
    print(f"{BINARY}: error: {e}", file=sys.stderr)
    return 2 if isinstance(e, ValueError) else 1
  try:
    print(f"{BINARY}: {host.describe()}", flush=True)
    code = host.wait()
  finally:
    host.close()
  if code is not None:
    print(f"{BINARY}: error: the TFF worker exited (code {code}); see {host.log_path}")
    return 1
  print(f"{BINARY}: stopped", flush=True)
  return 0


if __name__ == "__main__":
  try:
    app.run(main)
  except flags.Error as e:
    print(f"{BINARY}: error: {e}", file=sys.stderr)
    sys.exit(2)
