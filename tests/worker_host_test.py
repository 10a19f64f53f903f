"""A served TFF worker: plain or TLS, the worker's own port out of reach, clean stops.

Each TLS case is the attack it stops: a client without a certificate, one
with a certificate from another CA, and a plain client, all get nothing.
"""

import os

import numpy as np
import pytest
import tensorflow_federated as tff

from dopamine_tff import runtime
from dopamine_tff import transport
from dopamine_tff import worker_host
from tests import procs
from tests import tls_certs

ISOLATION = worker_host.namespaces_allowed()


@tff.tensorflow.computation(np.int32)
def _double(x):
  return x * 2


@tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
def _total(xs):
  return tff.federated_sum(tff.federated_map(_double, xs))


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({}, "give --tls_cert and --tls_key"),
    ({"insecure_transport": True, "port": 70000}, "port must be"),
    ({"tls_cert": "/no/cert.pem"}, "needs both"),
    ({"tls_cert": "/no/c.pem", "tls_key": "/no/k.pem"}, "--tls_cert '/no/c.pem' does not exist"),
    ({"insecure_transport": True, "client_ca": "/x"}, "--client_ca needs TLS"),
    ({"insecure_transport": True, "worker_binary": "/no/worker"}, "does not exist"),
    ({"insecure_transport": True, "cpus": (4096,)}, "CPUs \\[4096\\] are not available"),
  ],
)
def test_bad_host_configs_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    worker_host.HostConfig(**kwargs)


def test_parse_cpus():
  assert worker_host.parse_cpus("") == ()
  assert worker_host.parse_cpus("0-2,5,1") == (0, 1, 2, 5)
  with pytest.raises(ValueError, match="not a list"):
    worker_host.parse_cpus("0-a")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
  d = tmp_path_factory.mktemp("certs")
  paths = tls_certs.make(str(d))
  other = d / "other"
  other.mkdir()
  paths["other"] = tls_certs.make(str(other), ca_name="another CA")
  return paths


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
  h = host(tls_cert=certs["server"], tls_key=certs["server_key"], client_ca=certs["ca"])
  _tls_runtime(h.port, certs)
  assert _double(21) == 42 and _total([1, 2, 3]) == 12
  # The plain worker runs in another network namespace: nothing on this host's
  # network reaches its port.
  (worker,) = procs.children(h.process.pid)
  assert os.readlink(f"/proc/{worker}/ns/net") != os.readlink("/proc/self/ns/net")
  relay, sock_dir = h.process.pid, h._dir
  assert os.stat(sock_dir).st_mode & 0o777 == 0o700
  h.close()
  assert procs.dead(relay) and procs.dead(worker) and not os.path.exists(sock_dir)


@pytest.mark.skipif(ISOLATION is not None, reason=f"no network namespaces: {ISOLATION}")
@pytest.mark.parametrize("client", ["no certificate", "another CA's certificate", "plain"])
def test_tls_refuses_clients_without_a_valid_certificate(client, host, certs, tff_runtime):
  h = host(tls_cert=certs["server"], tls_key=certs["server_key"], client_ca=certs["ca"])
  address = f"localhost:{h.port}"
  with pytest.raises(runtime.WorkerDied, match=f"{address} cannot be reached"):
    if client == "no certificate":
      _tls_runtime(h.port, certs, client_cert=None, client_key=None)
    elif client == "another CA's certificate":
      other = certs["other"]
      _tls_runtime(h.port, certs, client_cert=other["client"], client_key=other["client_key"])
    else:
      runtime.start(runtime.RuntimeConfig(addresses=(address,), unreachable_after_s=3))


@pytest.mark.skipif(ISOLATION is not None, reason=f"no network namespaces: {ISOLATION}")
def test_the_driver_refuses_a_worker_whose_certificate_it_cannot_verify(host, certs, tff_runtime):
  h = host(tls_cert=certs["server"], tls_key=certs["server_key"])  # no client certificates
  _tls_runtime(h.port, certs, client_cert=None, client_key=None)
  assert _double(4) == 8
  with pytest.raises(runtime.WorkerDied, match="cannot be reached"):
    _tls_runtime(h.port, certs, ca=certs["other"]["ca"], client_cert=None, client_key=None)


def test_tls_without_namespaces_is_refused_unless_the_user_firewalls(monkeypatch, certs, tmp_path):
  monkeypatch.setattr(worker_host, "namespaces_allowed", lambda: "user namespaces are off")
  cfg = worker_host.HostConfig(tls_cert=certs["server"], tls_key=certs["server_key"])
  with pytest.raises(ValueError, match="user namespaces are off.*--noisolate"):
    worker_host.Host(cfg).start()
