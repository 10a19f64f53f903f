"""A TFF worker served for other hosts' drivers (experiments/tff_worker.py).

A TFF worker runs whatever computation it is sent, as the user that runs it:
whoever reaches its port runs code on this host. TFF's C++ ``worker_binary``
takes only a port, listens on every interface and speaks plain gRPC, so it is
never exposed itself. It runs in a network namespace of its own (an
unprivileged user + network namespace, ``unshare -rn``), where only its
private loopback exists; a relay in that namespace joins it to a Unix socket
in a directory only this user can open; and a gRPC proxy in this process
(worker_gate.Gate) serves the port and forwards each executor call, bytes
unchanged. Two ways to serve it:

* TLS: the proxy terminates TLS, requires a client certificate from
  ``client_ca`` and forwards only the pinned drivers' calls
  (``allowed_clients``: certificate fingerprints).
* plain (``insecure_transport``): the proxy listens on loopback only, for a
  driver on this host.

Anything wider (TLS without client certificates, any certificate of the CA,
plain gRPC off loopback) is refused unless ``insecure_any_client``, whose
name says what it allows. Where namespaces are not allowed, the run is
refused unless ``isolate=False`` (the user then firewalls the worker's port).

Both stop cleanly on SIGTERM or SIGINT: the worker is terminated, the socket
directory removed. This module does not import TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading

import grpc
import portpicker

from dopamine_tff import transport
from dopamine_tff import worker_gate
from dopamine_tff import worker_process

_OPTIONS = transport.GRPC_OPTIONS


@dataclasses.dataclass(frozen=True)
class HostConfig:
  """How a worker is served.

  Attributes:
    port: the port clients connect to (0: pick a free one).
    bind: the interface the proxy listens on (default: all for TLS, loopback
      for plain gRPC).
    max_concurrent_computation_calls: the worker's limit (<= 0: none).
    worker_binary: the worker to run (e.g. a CUDA build); default TFF's.
    log_path: the worker's log file (default: in the temp directory).
    tls_cert, tls_key: PEM certificate chain and key served (TLS mode).
    client_ca: PEM CA that client certificates must chain to; a client
      without a valid certificate is refused.
    allowed_clients: SHA-256 fingerprints of the drivers' client certificates
      whose calls are forwarded (needs client_ca).
    insecure_any_client: accept what the checks below refuse: TLS without
      client certificates or pins, plain gRPC off loopback, a plain worker
      not isolated. Whoever reaches the port then runs code as this user.
    insecure_transport: serve plain gRPC (no TLS).
    isolate: run the worker in its own network namespace.
    cpus: CPUs the worker may run on (empty: all), e.g. to give workers on one
      host their shares of its cores.
  """

  port: int = 0
  bind: str | None = None
  max_concurrent_computation_calls: int = -1
  worker_binary: str | None = None
  log_path: str | None = None
  tls_cert: str | None = None
  tls_key: str | None = None
  client_ca: str | None = None
  allowed_clients: tuple[str, ...] = ()
  insecure_any_client: bool = False
  insecure_transport: bool = False
  isolate: bool = True
  cpus: tuple[int, ...] = ()

  def __post_init__(self):
    if not 0 <= self.port < 65536:
      raise ValueError(f"port must be in [0, 65535], got {self.port}")
    if self.worker_binary is not None and not os.path.isfile(self.worker_binary):
      raise ValueError(f"worker_binary {self.worker_binary!r} does not exist")
    tls = self.tls_cert is not None or self.tls_key is not None
    if tls and (self.tls_cert is None or self.tls_key is None):
      raise ValueError("TLS needs both --tls_cert and --tls_key")
    if tls and self.insecure_transport:
      raise ValueError("--insecure_transport and --tls_cert: pick one")
    if not tls and not self.insecure_transport:
      raise ValueError(
        "give --tls_cert and --tls_key (TLS), or --insecure_transport: the hospitals' data "
        "would cross the network in the clear"
      )
    if self.client_ca is not None and not tls:
      raise ValueError("--client_ca needs TLS (--tls_cert and --tls_key)")
    object.__setattr__(
      self, "allowed_clients", tuple(worker_gate.parse_fingerprint(f) for f in self.allowed_clients)
    )
    if self.allowed_clients and self.client_ca is None:
      raise ValueError("--allowed_clients needs --client_ca (client certificates to pin)")
    if not self.insecure_any_client:
      self._check_who_may_send_code()
    for name in ("tls_cert", "tls_key", "client_ca"):
      path = getattr(self, name)
      if path is not None and not os.path.isfile(path):
        raise ValueError(f"--{name} {path!r} does not exist")
    if self.cpus:
      available = os.sched_getaffinity(0)
      missing = sorted(set(self.cpus) - available)
      if missing:
        raise ValueError(f"CPUs {missing} are not available here (have {sorted(available)})")

  def _check_who_may_send_code(self) -> None:
    """Refuses a worker that anyone but the pinned driver could send code to."""
    runs = "runs code on this host as this user; "
    opt_out = "or --insecure_any_client to accept that"
    if self.tls and self.client_ca is None:
      raise ValueError(
        "TLS without --client_ca: any client that reaches the port " + runs + "give "
        "--client_ca and --allowed_clients (the driver certificate's SHA-256 fingerprint), "
        + opt_out
      )
    if self.tls and not self.allowed_clients:
      raise ValueError(
        "--client_ca alone accepts every certificate the CA issued (another worker's too), "
        "and each " + runs + "pin the driver with --allowed_clients=<SHA-256 fingerprint "
        "of its certificate> (openssl x509 -noout -fingerprint -sha256 -in driver.pem), " + opt_out
      )
    if not self.tls and not transport.is_loopback(f"{self.listen}:1"):
      raise ValueError(
        f"plain gRPC on {self.listen}: anyone who reaches it " + runs + "serve TLS, keep "
        "the default loopback --bind, " + opt_out
      )
    if not self.tls and not self.isolate:
      raise ValueError(
        "a plain worker not isolated listens on every interface: anyone who reaches it "
        + runs
        + "drop --noisolate, "
        + opt_out
      )

  @property
  def tls(self) -> bool:
    return self.tls_cert is not None

  @property
  def listen(self) -> str:
    """The interface the port is served on."""
    if self.bind is not None:
      return self.bind
    return "[::]" if self.tls else "127.0.0.1"


class Host:
  """A served worker: start(), then wait() until stop() or the worker dies."""

  def __init__(self, cfg: HostConfig):
    self.cfg = cfg
    self.port = cfg.port
    self.log_path = cfg.log_path
    self.process: subprocess.Popen | None = None  # the worker, or the namespace's relay
    self._server = None
    self._channel = None
    self._dir = None
    self._stop = threading.Event()

  def start(self) -> Host:
    cfg = self.cfg
    binary = cfg.worker_binary or worker_process.default_worker_binary()
    if cfg.isolate:
      why = worker_process.namespaces_allowed()
      if why is not None:
        raise ValueError(
          f"cannot isolate the worker's plain port in a network namespace ({why}); "
          "firewall that port and pass --noisolate"
        )
    if self.log_path is None:
      fd, self.log_path = tempfile.mkstemp(prefix="dopamine_tff_host_worker_", suffix=".log")
      os.close(fd)
    if not cfg.tls and not cfg.isolate:  # --insecure_any_client: the worker's own port
      if self.port == 0:
        self.port = portpicker.pick_unused_port()
      self.process = worker_process.start_worker(
        binary, self.port, cfg.max_concurrent_computation_calls, self.log_path, cfg.cpus
      )
      worker_process.wait_port("127.0.0.1", self.port, self.process)
      return self
    self._dir = tempfile.mkdtemp(prefix="dopamine_tff_host_")  # mode 0700
    if cfg.isolate:
      target = os.path.join(self._dir, "worker.sock")
      self.process = worker_process.start_isolated(
        binary, target, cfg.max_concurrent_computation_calls, self.log_path, cfg.cpus
      )
      self._channel = grpc.insecure_channel(f"unix:{target}", _OPTIONS)
    else:
      inner = portpicker.pick_unused_port()
      self.process = worker_process.start_worker(
        binary, inner, cfg.max_concurrent_computation_calls, self.log_path, cfg.cpus
      )
      worker_process.wait_port("127.0.0.1", inner, self.process)
      self._channel = grpc.insecure_channel(f"localhost:{inner}", _OPTIONS)
    self._serve()
    return self

  def _serve(self) -> None:
    """The gate on the port: TLS (client certificates, pinned drivers) or plain."""
    cfg = self.cfg

    def read(path):
      with open(path, "rb") as f:
        return f.read()

    self.gate = worker_gate.Gate(self._channel, frozenset(cfg.allowed_clients))
    self._server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=64), handlers=[self.gate], options=_OPTIONS
    )
    address = f"{cfg.listen}:{cfg.port}"
    if cfg.tls:
      creds = grpc.ssl_server_credentials(
        [(read(cfg.tls_key), read(cfg.tls_cert))],
        root_certificates=read(cfg.client_ca) if cfg.client_ca else None,
        require_client_auth=cfg.client_ca is not None,
      )
      self.port = self._server.add_secure_port(address, creds)
    else:
      self.port = self._server.add_insecure_port(address)
    if self.port == 0:
      raise ValueError(f"cannot listen on {address}")
    self._server.start()

  def describe(self) -> str:
    cfg = self.cfg
    if not cfg.tls:
      how = (
        f"plain gRPC (--insecure_transport) on {cfg.listen}"
        if cfg.isolate
        else ("plain gRPC (--insecure_transport), the worker's own port on every interface")
      )
    else:
      auth = (
        f"client certificates required, {len(cfg.allowed_clients)} pinned driver(s)"
        if cfg.allowed_clients
        else "client certificates required, ANY the CA issued"
        if cfg.client_ca
        else "no client certificates"
      )
      how = f"TLS on {cfg.listen} ({auth})"
    inner = (
      "the worker isolated in its own network namespace"
      if cfg.isolate
      else "the worker's plain port NOT isolated: firewall it"
    )
    warn = (
      "; --insecure_any_client: ANYONE WHO REACHES THIS PORT RUNS CODE AS THIS USER"
      if cfg.insecure_any_client
      else ""
    )
    return (
      f"serving a TFF worker on port {self.port}: {how}; {inner}{warn}; worker log {self.log_path}"
    )

  def stop(self, *_signal) -> None:
    self._stop.set()

  def wait(self) -> int | None:
    """Blocks until stop() (returns None) or the worker exits (its return code)."""
    while not self._stop.wait(0.2):
      if self.process is not None and self.process.poll() is not None:
        return self.process.returncode
    return None

  def close(self) -> None:
    if self._server is not None:
      self._server.stop(grace=1).wait()
      self._server = None
    if self._channel is not None:
      self._channel.close()
      self._channel = None
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    if self._dir is not None:
      shutil.rmtree(self._dir, ignore_errors=True)
      self._dir = None
