"""A TFF worker served for other hosts' drivers (experiments/tff_worker.py).

TFF's C++ ``worker_binary`` takes only a port, listens on every interface and
speaks plain gRPC. Two ways to serve it:

* plain (``insecure_transport``): the worker itself listens on the port. For
  loopback use, or a network you trust: the simulated hospitals' data cross
  it in the clear.
* TLS: a gRPC proxy in this process terminates TLS on the port (optionally
  requiring client certificates) and forwards each executor call, bytes
  unchanged, to the worker. So that the worker's own plain port cannot be
  reached from the network, the worker runs in a network namespace of its
  own (an unprivileged user + network namespace, ``unshare -rn``), where
  only its private loopback exists; a relay in that namespace joins it to a
  Unix socket in a directory only this user can open. Where namespaces are
  not allowed, the run is refused unless ``isolate=False`` (the user then
  firewalls the worker's port).

Both stop cleanly on SIGTERM or SIGINT: the worker is terminated, the socket
directory removed. This module does not import TensorFlow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import portpicker

from dopamine_tff import transport

_PR_SET_PDEATHSIG = 1
_INNER_PORT = 10000  # inside the private namespace every port is free
_SERVICE = "/tensorflow_federated.v0.ExecutorGroup/"
_OPTIONS = transport.GRPC_OPTIONS


def default_worker_binary() -> str:
  """TFF's CPU worker, found without importing TensorFlow."""
  spec = importlib.util.find_spec("tensorflow_federated")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("tensorflow_federated is not installed; give --worker_binary")
  return os.path.join(spec.submodule_search_locations[0], "data", "worker_binary")


@dataclasses.dataclass(frozen=True)
class HostConfig:
  """How a worker is served.

  Attributes:
    port: the port clients connect to (0: pick a free one).
    bind: the interface the TLS proxy listens on ("[::]": all). The plain
      worker cannot be bound to one interface: it listens on all.
    max_concurrent_computation_calls: the worker's limit (<= 0: none).
    worker_binary: the worker to run (e.g. a CUDA build); default TFF's.
    log_path: the worker's log file (default: in the temp directory).
    tls_cert, tls_key: PEM certificate chain and key served (TLS mode).
    client_ca: PEM CA that client certificates must chain to; given, a client
      without a valid certificate is refused.
    insecure_transport: serve plain gRPC (no TLS).
    isolate: in TLS mode, run the worker in its own network namespace.
    cpus: CPUs the worker may run on (empty: all), e.g. to give workers on one
      host their shares of its cores.
  """

  port: int = 0
  bind: str = "[::]"
  max_concurrent_computation_calls: int = -1
  worker_binary: str | None = None
  log_path: str | None = None
  tls_cert: str | None = None
  tls_key: str | None = None
  client_ca: str | None = None
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
    for name in ("tls_cert", "tls_key", "client_ca"):
      path = getattr(self, name)
      if path is not None and not os.path.isfile(path):
        raise ValueError(f"--{name} {path!r} does not exist")
    if self.cpus:
      available = os.sched_getaffinity(0)
      missing = sorted(set(self.cpus) - available)
      if missing:
        raise ValueError(f"CPUs {missing} are not available here (have {sorted(available)})")

  @property
  def tls(self) -> bool:
    return self.tls_cert is not None


def parse_cpus(text: str) -> tuple[int, ...]:
  """'0-3,6' -> (0, 1, 2, 3, 6) (ValueError on anything else)."""
  if not text:
    return ()
  cpus = []
  for part in text.split(","):
    lo, _, hi = part.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
      raise ValueError(f"--cpus {text!r} is not a list like 0-3,6")
    cpus.extend(range(int(lo), int(hi or lo) + 1))
  return tuple(sorted(set(cpus)))


def child_setup(cpus: tuple[int, ...] = ()):
  """The preexec_fn of a worker we start: it gets SIGTERM when its parent dies
  (even a SIGKILLed one), ignores Ctrl-C (the terminal signals the whole group;
  the parent finishes its round and stops it), and runs on `cpus` if given."""

  def setup():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIG_IGN survives exec
    if cpus:
      os.sched_setaffinity(0, cpus)
    if os.getppid() == 1:  # the parent died between fork and prctl
      os._exit(1)

  return setup


def _start_worker(binary, port, max_calls, log_path, cpus) -> subprocess.Popen:
  with open(log_path, "ab") as log:
    return subprocess.Popen(
      [binary, f"--port={port}", f"--max_concurrent_computation_calls={max_calls}"],
      stdin=subprocess.DEVNULL,
      stdout=log,
      stderr=subprocess.STDOUT,
      close_fds=True,
      preexec_fn=child_setup(cpus),
    )


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
  deadline = time.monotonic() + timeout_s
  while True:
    if proc.poll() is not None:
      raise RuntimeError(f"the TFF worker exited at start (code {proc.returncode})")
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
      return
    if time.monotonic() > deadline:
      raise RuntimeError(f"the TFF worker did not listen on port {port} in {timeout_s} s")
    time.sleep(0.05)


def namespaces_allowed() -> str | None:
  """None when unprivileged user + network namespaces work here, else why not."""
  if shutil.which("unshare") is None:
    return "the unshare command (util-linux) is not installed"
  try:
    proc = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired) as e:
    return str(e)
  if proc.returncode != 0:
    return proc.stderr.strip() or f"unshare -rn exited {proc.returncode}"
  return None


class _Forward(grpc.GenericRpcHandler):
  """Forwards every executor-service call, bytes unchanged, to `channel`."""

  def __init__(self, channel: grpc.Channel):
    self._channel = channel
    self._handlers = {}
    self._lock = threading.Lock()

  def service(self, details):
    method = details.method
    if not method.startswith(_SERVICE):
      return None
    with self._lock:
      if method not in self._handlers:
        call = self._channel.unary_unary(method)  # no (de)serializers: bytes

        def handle(request, context, call=call):
          try:
            return call(request)
          except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")

        self._handlers[method] = grpc.unary_unary_rpc_method_handler(handle)
      return self._handlers[method]


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
    binary = cfg.worker_binary or default_worker_binary()
    if cfg.tls and cfg.isolate:
      why = namespaces_allowed()
      if why is not None:
        raise ValueError(
          f"cannot isolate the worker's plain port in a network namespace ({why}); "
          "firewall that port and pass --noisolate"
        )
    if self.log_path is None:
      fd, self.log_path = tempfile.mkstemp(prefix="dopamine_tff_host_worker_", suffix=".log")
      os.close(fd)
    if not cfg.tls:
      if self.port == 0:
        self.port = portpicker.pick_unused_port()
      self.process = _start_worker(
        binary, self.port, cfg.max_concurrent_computation_calls, self.log_path, cfg.cpus
      )
      _wait_port("127.0.0.1", self.port, self.process)
      return self
    self._dir = tempfile.mkdtemp(prefix="dopamine_tff_host_")  # mode 0700
    if cfg.isolate:
      target = os.path.join(self._dir, "worker.sock")
      self.process = self._start_isolated(binary, target)
      self._channel = grpc.insecure_channel(f"unix:{target}", _OPTIONS)
    else:
      inner = portpicker.pick_unused_port()
      self.process = _start_worker(
        binary, inner, cfg.max_concurrent_computation_calls, self.log_path, cfg.cpus
      )
      _wait_port("127.0.0.1", inner, self.process)
      self._channel = grpc.insecure_channel(f"localhost:{inner}", _OPTIONS)
    self._serve_tls()
    return self

  def _start_isolated(self, binary: str, sock: str) -> subprocess.Popen:
    args = [
      "unshare",
      "-rn",
      sys.executable,
      "-m",
      "dopamine_tff.worker_host",
      sock,
      binary,
      str(self.cfg.max_concurrent_computation_calls),
      self.log_path,
      ",".join(map(str, self.cfg.cpus)),
    ]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
      args,
      stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      close_fds=True,
      preexec_fn=child_setup(),
      env=env,
    )
    line = proc.stdout.readline().decode().strip()
    if line != "ready":
      proc.kill()
      proc.wait()
      raise RuntimeError(f"the isolated TFF worker did not start ({line or 'no output'})")
    return proc

  def _serve_tls(self) -> None:
    cfg = self.cfg

    def read(path):
      with open(path, "rb") as f:
        return f.read()

    creds = grpc.ssl_server_credentials(
      [(read(cfg.tls_key), read(cfg.tls_cert))],
      root_certificates=read(cfg.client_ca) if cfg.client_ca else None,
      require_client_auth=cfg.client_ca is not None,
    )
    self._server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=64),
      handlers=[_Forward(self._channel)],
      options=_OPTIONS,
    )
    self.port = self._server.add_secure_port(f"{cfg.bind}:{cfg.port}", creds)
    if self.port == 0:
      raise ValueError(f"cannot listen on {cfg.bind}:{cfg.port}")
    self._server.start()

  def describe(self) -> str:
    cfg = self.cfg
    if not cfg.tls:
      how = "plain gRPC (--insecure_transport), on every interface"
    else:
      auth = "client certificates required" if cfg.client_ca else "no client certificates"
      inner = (
        "the worker isolated in its own network namespace"
        if cfg.isolate
        else "the worker's plain port NOT isolated: firewall it"
      )
      how = f"TLS on {cfg.bind} ({auth}); {inner}"
    return f"serving a TFF worker on port {self.port}: {how}; worker log {self.log_path}"

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


def _loopback_up() -> None:
  """Brings up `lo` in a fresh network namespace (it starts down)."""
  siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    ifr = fcntl.ioctl(s, siocgifflags, struct.pack("16sH14x", b"lo", 0))
    flags = struct.unpack("16sH14x", ifr)[1]
    fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


async def _pipe(reader, writer) -> None:
  try:
    while data := await reader.read(1 << 20):
      writer.write(data)
      await writer.drain()
  except (ConnectionError, asyncio.IncompleteReadError):
    pass
  finally:
    with contextlib.suppress(Exception):
      writer.close()


async def _relay(sock: str, port: int, worker: subprocess.Popen) -> None:
  async def join(reader, writer):
    try:
      up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
      writer.close()
      return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

  server = await asyncio.start_unix_server(join, path=sock)
  os.chmod(sock, 0o600)
  print("ready", flush=True)
  async with server:
    while worker.poll() is None:
      await asyncio.sleep(0.2)


def _inner_main(argv) -> int:
  """In the private namespace: the worker on its loopback, and the relay from
  the Unix socket to it. Ends with the worker, or on SIGTERM (with it)."""
  sock, binary, max_calls, log_path, cpus = argv
  # Entering a user namespace cleared the death signal the parent set.
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
  if os.getppid() == 1:
    return 1
  _loopback_up()
  worker = _start_worker(binary, _INNER_PORT, int(max_calls), log_path, parse_cpus(cpus))

  def stop(*_):
    if worker.poll() is None:
      worker.terminate()
      with contextlib.suppress(subprocess.TimeoutExpired):
        worker.wait(timeout=5)
    os._exit(0)

  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    _wait_port("127.0.0.1", _INNER_PORT, worker)
  except RuntimeError as e:
    print(str(e), flush=True)
    return 1
  asyncio.run(_relay(sock, _INNER_PORT, worker))
  return worker.returncode or 0


if __name__ == "__main__":
  sys.exit(_inner_main(sys.argv[1:]))
