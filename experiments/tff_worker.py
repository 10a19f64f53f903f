"""Serves a TFF worker on this host for drivers elsewhere (run_experiment
--worker_addresses=host:port,...).

  # TLS for another host's driver: only the driver whose certificate is pinned runs code
  python -m experiments.tff_worker --port=8000 --tls_cert=worker.pem --tls_key=worker.key \
      --client_ca=drivers_ca.pem --allowed_clients=<sha256 fingerprint of driver.pem>
  # plain gRPC for a driver on this host (served on loopback only)
  python -m experiments.tff_worker --port=8000 --insecure_transport

A TFF worker runs whatever computation it is sent: whoever reaches an
unauthenticated port runs code as this worker's user. Anything wider than the
two forms above needs --insecure_any_client.

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
from dopamine_tff import worker_process

BINARY = "tff_worker"

flags.DEFINE_integer("port", 8000, "Port drivers connect to (0: a free one, printed).")
flags.DEFINE_string(
  "bind", None, "Interface the port is served on (default: [::], all, for TLS; 127.0.0.1 plain)."
)
flags.DEFINE_integer("max_concurrent_calls", -1, "Worker: max concurrent client calls (<=0: none).")
flags.DEFINE_string("worker_binary", None, "Worker binary (e.g. a CUDA build); default TFF's.")
flags.DEFINE_string("log_file", None, "The worker's log (default: in the temp directory).")
flags.DEFINE_string("tls_cert", None, "PEM certificate chain served over TLS.")
flags.DEFINE_string("tls_key", None, "PEM private key of --tls_cert.")
flags.DEFINE_string("client_ca", None, "PEM CA that the drivers' client certificates chain to.")
flags.DEFINE_list(
  "allowed_clients",
  [],
  "SHA-256 fingerprints of the drivers' certificates (openssl x509 -noout -fingerprint "
  "-sha256): only their calls reach the worker.",
)
flags.DEFINE_bool(
  "insecure_any_client",
  False,
  "Serve without pinned drivers (TLS without --client_ca/--allowed_clients, plain gRPC off "
  "loopback or not isolated): ANYONE WHO REACHES THE PORT RUNS CODE AS THIS USER.",
)
flags.DEFINE_bool(
  "insecure_transport", False, "Serve plain gRPC: the hospitals' data cross the network in clear."
)
flags.DEFINE_bool(
  "isolate",
  True,
  "Run the worker in its own network namespace, so its plain port is unreachable.",
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
    allowed_clients=tuple(values["allowed_clients"]),
    insecure_any_client=values["insecure_any_client"],
    insecure_transport=values["insecure_transport"],
    isolate=values["isolate"],
    cpus=worker_process.parse_cpus(values["cpus"]),
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
