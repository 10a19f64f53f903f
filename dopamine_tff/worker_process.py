"""Starting TFF's C++ worker: a child that dies with its parent, or one in a
private network namespace (worker_host.py serves it to other hosts).

TFF's ``worker_binary`` takes only a port and listens on every interface. In
an unprivileged user + network namespace (``unshare -rn``) only its private
loopback exists; this module's ``__main__`` runs there, starts the worker on
that loopback and relays a Unix socket (in a directory only this user can
open) to it. Does not import TensorFlow.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1
_INNER_PORT = 10000  # inside the private namespace every port is free


def default_worker_binary() -> str:
  """TFF's CPU worker, found without importing TensorFlow."""
  spec = importlib.util.find_spec("tensorflow_federated")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("tensorflow_federated is not installed; give --worker_binary")
  return os.path.join(spec.submodule_search_locations[0], "data", "worker_binary")


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


def start_worker(binary, port, max_calls, log_path, cpus) -> subprocess.Popen:
  with open(log_path, "ab") as log:
    return subprocess.Popen(
      [binary, f"--port={port}", f"--max_concurrent_computation_calls={max_calls}"],
      stdin=subprocess.DEVNULL,
      stdout=log,
      stderr=subprocess.STDOUT,
      close_fds=True,
      preexec_fn=child_setup(cpus),
    )


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
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


def start_isolated(
  binary: str, sock: str, max_calls: int, log_path: str, cpus=()
) -> subprocess.Popen:
  """The worker in a private network namespace, reached through the Unix socket `sock`."""
  args = [
    "unshare",
    "-rn",
    sys.executable,
    "-m",
    "dopamine_tff.worker_process",
    sock,
    binary,
    str(max_calls),
    log_path,
    ",".join(map(str, cpus)),
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
  worker = start_worker(binary, _INNER_PORT, int(max_calls), log_path, parse_cpus(cpus))

  def stop(*_):
    if worker.poll() is None:
      worker.terminate()
      with contextlib.suppress(subprocess.TimeoutExpired):
        worker.wait(timeout=5)
    os._exit(0)

  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    wait_port("127.0.0.1", _INNER_PORT, worker)
  except RuntimeError as e:
    print(str(e), flush=True)
    return 1
  asyncio.run(_relay(sock, _INNER_PORT, worker))
  return worker.returncode or 0


if __name__ == "__main__":
  sys.exit(_inner_main(sys.argv[1:]))
