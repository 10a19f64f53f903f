"""A served TFF worker: plain or TLS, the worker's own port out of reach, clean stops.

Each case is the attack it stops, with a computation that writes a file on
the worker's host: a client without a certificate, one with another CA's
certificate, one with another worker's certificate from the same CA, a plain
client to a TLS port, and a plain client from another host: none runs it.
"""

import contextlib
import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from dopamine_tff import runtime
from dopamine_tff import transport
from dopamine_tff import worker_gate
from dopamine_tff import worker_host
from dopamine_tff import worker_process
from tests import procs
from tests import tls_certs

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

ISOLATION = worker_process.namespaces_allowed()


@tff.tensorflow.computation(np.int32)
def _double(x):
  return x * 2


@tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
def _total(xs):
  return tff.federated_sum(tff.federated_map(_double, xs))


_FP = "ab" * 32


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({}, "give --tls_cert and --tls_key"),
    ({"insecure_transport": True, "port": 70000}, "port must be"),
    ({"tls_cert": "/no/cert.pem"}, "needs both"),
    ({"insecure_transport": True, "client_ca": "/x"}, "--client_ca needs TLS"),
    ({"insecure_transport": True, "worker_binary": "/no/worker"}, "does not exist"),
    ({"insecure_transport": True, "cpus": (4096,)}, "CPUs \\[4096\\] are not available"),
    # Who may send the worker code: nobody but the pinned driver, unless opted out.
    ({"tls": "server"}, "TLS without --client_ca: any client that reaches the port runs code"),
    ({"tls": "server", "client_ca": "ca"}, "--client_ca alone accepts every certificate"),
    ({"tls": "server", "allowed_clients": (_FP,)}, "--allowed_clients needs --client_ca"),
    ({"tls": "server", "client_ca": "ca", "allowed_clients": ("xyz",)}, "not a SHA-256"),
    ({"insecure_transport": True, "bind": "0.0.0.0"}, "plain gRPC on 0.0.0.0: anyone who"),
    ({"insecure_transport": True, "isolate": False}, "a plain worker not isolated"),
  ],
)
def test_bad_host_configs_are_refused(kwargs, message, certs):
  kwargs = dict(kwargs)
  if kwargs.pop("tls", None):
    kwargs.update(tls_cert=certs["server"], tls_key=certs["server_key"])
  if kwargs.get("client_ca") == "ca":
    kwargs["client_ca"] = certs["ca"]
  with pytest.raises(ValueError, match=message):
    worker_host.HostConfig(**kwargs)


def test_the_opt_out_serves_what_the_checks_refuse_and_says_so(certs):
  cfg = worker_host.HostConfig(
    tls_cert=certs["server"], tls_key=certs["server_key"], insecure_any_client=True
  )
  assert "ANYONE WHO REACHES THIS PORT RUNS CODE" in worker_host.Host(cfg).describe()


def test_fingerprints_in_openssl_and_plain_forms_are_one():
  colons = ":".join(["AB"] * 32)
  assert worker_gate.parse_fingerprint(f"SHA256 Fingerprint={colons}") == _FP
  assert worker_gate.parse_fingerprint(f"sha256:{_FP.upper()}") == _FP


def test_parse_cpus():
  assert worker_process.parse_cpus("") == ()
  assert worker_process.parse_cpus("0-2,5,1") == (0, 1, 2, 5)
  with pytest.raises(ValueError, match="not a list"):
    worker_process.parse_cpus("0-a")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
  d = tmp_path_factory.mktemp("certs")
  paths = tls_certs.make(str(d))
  other = d / "other"
  other.mkdir()
  paths["other"] = tls_certs.make(str(other), ca_name="another CA")
  return paths


def _fingerprint(path):
  with open(path, "rb") as f:
    return worker_gate.fingerprint_of_pem(f.read())


def _tls_host(certs, **kwargs):
  """A TLS worker that runs only the driver holding certs['client']."""
  kwargs.setdefault("client_ca", certs["ca"])
  kwargs.setdefault("allowed_clients", (_fingerprint(certs["client"]),))
  return dict(tls_cert=certs["server"], tls_key=certs["server_key"], **kwargs)


def _attack(path):
  """A computation that writes `path` on whatever host runs it."""

  @tff.tensorflow.computation
  def write():
    with tf.control_dependencies([tf.io.write_file(path, "ran on the worker")]):
      return tf.constant(1)

  return write


@pytest.fixture
def host(certs, tmp_path):
  hosts = []

  def start(**kwargs):
    kwargs.setdefault("log_path", str(tmp_path / "worker.log"))
    h = worker_host.Host(worker_host.HostConfig(**kwargs)).start()
    hosts.append(h)
    return h

  yield start
  for h in hosts:
    h.close()
  runtime.start()  # back to the tests' own local worker


def _tls_runtime(port, certs, **kwargs):
  kwargs.setdefault("client_cert", certs["client"])
  kwargs.setdefault("client_key", certs["client_key"])
  tls = transport.TlsConfig(ca_cert=kwargs.pop("ca", certs["ca"]), **kwargs)
  return runtime.start(
    runtime.RuntimeConfig(addresses=(f"localhost:{port}",), tls=tls, unreachable_after_s=3)
  )


def test_a_plain_host_serves_and_stops(host, tff_runtime):
  h = host(insecure_transport=True)
  rt = runtime.start(runtime.RuntimeConfig(addresses=(f"localhost:{h.port}",)))
  assert _total([1, 2, 3]) == 12
  traffic = rt.traffic()[f"localhost:{h.port}"]
  assert traffic["sent"] > 0 and traffic["received"] > 0 and traffic["calls"] > 0
  pid = h.process.pid
  h.close()
  assert procs.dead(pid)


@pytest.mark.skipif(ISOLATION is not None, reason=f"no network namespaces: {ISOLATION}")
def test_tls_serves_a_client_with_a_certificate_and_isolates_the_plain_port(
  host, certs, tff_runtime
):
  h = host(**_tls_host(certs))
  _tls_runtime(h.port, certs)
  assert _double(21) == 42 and _total([1, 2, 3]) == 12
  assert h.gate.refused == 0
  # The plain worker runs in another network namespace: nothing on this host's
  # network reaches its port.
  (worker,) = procs.children(h.process.pid)
  assert os.readlink(f"/proc/{worker}/ns/net") != os.readlink("/proc/self/ns/net")
  relay, sock_dir = h.process.pid, h._dir
  assert os.stat(sock_dir).st_mode & 0o777 == 0o700
  h.close()
  assert procs.dead(relay) and procs.dead(worker) and not os.path.exists(sock_dir)


@pytest.mark.skipif(ISOLATION is not None, reason=f"no network namespaces: {ISOLATION}")
@pytest.mark.parametrize(
  "client", ["no certificate", "another CA's certificate", "another worker's certificate", "plain"]
)
def test_tls_runs_no_code_but_the_pinned_drivers(client, host, certs, tff_runtime, tmp_path):
  h = host(**_tls_host(certs))
  address, target = f"localhost:{h.port}", str(tmp_path / "written_by_the_attacker")
  with contextlib.suppress(runtime.WorkerDied, Exception):
    if client == "no certificate":
      _tls_runtime(h.port, certs, client_cert=None, client_key=None)
    elif client == "another CA's certificate":
      other = certs["other"]
      _tls_runtime(h.port, certs, client_cert=other["client"], client_key=other["client_key"])
    elif client == "another worker's certificate":  # from the same CA: the chain is valid
      _tls_runtime(h.port, certs, client_cert=certs["server"], client_key=certs["server_key"])
    else:
      runtime.start(runtime.RuntimeConfig(addresses=(address,), unreachable_after_s=3))
    _attack(target)()
  assert not os.path.exists(target)
  if client == "another worker's certificate":
    assert h.gate.refused > 0  # the handshake passed; the gate refused its calls


def _external_address():
  """This host's address on its network (not loopback), or None."""
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    try:
      s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
      ip = s.getsockname()[0]
    except OSError:
      return None
  return None if ip.startswith("127.") else ip


@pytest.mark.skipif(ISOLATION is not None, reason=f"no network namespaces: {ISOLATION}")
@pytest.mark.skipif(_external_address() is None, reason="this host has no non-loopback address")
def test_a_plain_worker_cannot_be_reached_from_the_network(host, tff_runtime):
  h = host(insecure_transport=True)
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection((_external_address(), h.port), timeout=5).close()
  (worker,) = procs.children(h.process.pid)  # the worker's own port: in its namespace
  assert os.readlink(f"/proc/{worker}/ns/net") != os.readlink("/proc/self/ns/net")


@pytest.mark.skipif(ISOLATION is not None, reason=f"no network namespaces: {ISOLATION}")
def test_the_driver_refuses_a_worker_whose_certificate_it_cannot_verify(host, certs, tff_runtime):
  h = host(**_tls_host(certs, client_ca=None, allowed_clients=(), insecure_any_client=True))
  _tls_runtime(h.port, certs, client_cert=None, client_key=None)
  assert _double(4) == 8
  with pytest.raises(runtime.WorkerDied, match="cannot be reached"):
    _tls_runtime(h.port, certs, ca=certs["other"]["ca"], client_cert=None, client_key=None)


def test_tls_without_namespaces_is_refused_unless_the_user_firewalls(monkeypatch, certs, tmp_path):
  monkeypatch.setattr(worker_process, "namespaces_allowed", lambda: "user namespaces are off")
  cfg = worker_host.HostConfig(**_tls_host(certs))
  with pytest.raises(ValueError, match="user namespaces are off.*--noisolate"):
    worker_host.Host(cfg).start()
