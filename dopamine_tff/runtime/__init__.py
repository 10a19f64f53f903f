"""The one place that creates, configures and tears down TFF's execution context.

The package's modules: config.py (RuntimeConfig), workers.py (the worker
processes), executors.py (remote executors, traffic counting, readiness),
compilation.py (secure intrinsics to their bodies); this file holds the
Runtime itself and the process's active one.

TFF's own local context starts its C++ ``worker_binary`` with the parent's
stdout and relies on ``__del__`` to stop it; at interpreter exit that fails, the
worker is re-parented and keeps the stdout pipe open (so ``python x.py | tail``
and CI hang). This module starts the worker itself:

* stdin/stdout/stderr are not inherited (the worker's log goes to a file),
* the child asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) to be
  terminated when its parent dies, so even a SIGKILLed Python takes it along,
* an ``atexit`` hook terminates every worker this process started, by PID.

The context compiles secure intrinsics (``federated_secure_sum_bitwidth``) to
their simulated bodies, because the C++ worker has no implementation of them:
quantisation and clipping are real, the cryptography is not (see
docs/privacy.md, "Threat model").

Users can instead point the runtime at running workers (``addresses``): one
(e.g. a build of TFF's worker with CUDA), or several, on this host or others
(``experiments/tff_worker.py`` starts one); each round's hospitals are then
split across them. Channels to other hosts use TLS unless the user opts out
(dopamine_tff/transport.py). Or it can start another worker binary
(``worker_binary``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import sys
import threading
import time

import grpc
import tensorflow_federated as tff

from dopamine_tff import transport
from dopamine_tff.runtime.compilation import _compile_mergeable
from dopamine_tff.runtime.compilation import compile_for_simulation
from dopamine_tff.runtime.config import RuntimeConfig
from dopamine_tff.runtime.config import default_worker_binary
from dopamine_tff.runtime.executors import ConcurrentRemoteExecutor
from dopamine_tff.runtime.executors import CountingStub
from dopamine_tff.runtime.executors import Endpoint
from dopamine_tff.runtime.executors import _wait_ready
from dopamine_tff.runtime.workers import Worker
from dopamine_tff.runtime.workers import WorkerDied
from dopamine_tff.runtime.workers import describe_exit

__all__ = [
  "ConcurrentRemoteExecutor",
  "CountingStub",
  "Endpoint",
  "Runtime",
  "RuntimeConfig",
  "Worker",
  "WorkerDied",
  "check_alive",
  "compile_for_simulation",
  "default_worker_binary",
  "describe_exit",
  "kill_workers",
  "ships_data",
  "shutdown",
  "start",
  "traffic",
  "worker_pids",
]


_ACTIVE = None  # the process's Runtime (start / shutdown)


class Runtime:
  """Owns the workers and the TFF execution context built over them."""

  def __init__(self, config: RuntimeConfig):
    self.config = config
    self.workers: list[Worker] = []
    self.endpoints: list[Endpoint] = []
    self._channels: list[grpc.Channel] = []
    self.context = None
    self.dead: Worker | None = None  # a worker that died under us (watchdog)
    self.unreachable: str | None = None  # an address that stopped answering (watchdog)
    self._stop_watch = threading.Event()
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # several workers

  def start(self) -> Runtime:
    cfg = self.config
    targets = list(cfg.addresses) or [None] * cfg.num_workers
    if len(targets) > 1:
      self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=4 + 4 * len(targets), thread_name_prefix="tff-worker-call"
      )
    factories = [self._executor_factory(a) for a in targets]
    if len(factories) == 1:
      self.context = tff.framework.SyncExecutionContext(
        executor_fn=factories[0],
        compiler_fn=compile_for_simulation,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
      )
    else:
      contexts = [
        tff.framework.AsyncExecutionContext(
          executor_fn=f,
          compiler_fn=compile_for_simulation,
          transform_args=tff.tensorflow.transform_args,
          transform_result=tff.tensorflow.transform_result,
        )
        for f in factories
      ]
      self.context = tff.framework.MergeableCompExecutionContext(
        async_contexts=contexts, compiler_fn=_compile_mergeable
      )
    tff.framework.set_default_context(self.context)
    threading.Thread(target=self._watch, name="tff-worker-watchdog", daemon=True).start()
    return self

  def _watch(self, every_s: float = 0.2) -> None:
    """Notices a worker that dies under a run (a process we started exits, or an
    address cannot be reached for `unreachable_after_s`): closes the channels so
    that a call blocked in TFF's gRPC retries (endless for an unreachable
    worker; 180 s and more seen) fails at once."""
    while not self._stop_watch.wait(every_s):
      if self._find_dead():
        for channel in list(self._channels):
          channel.close()
        return

  def _find_dead(self) -> bool:
    for e in list(self.endpoints):
      if e.worker is not None:
        if self.dead is None and not e.worker.alive() and not e.worker.stopping:
          self.dead = e.worker
      elif self.unreachable is None and (
        e.connectivity.failing_for() > self.config.unreachable_after_s
      ):
        self.unreachable = e.address
    return self.dead is not None or self.unreachable is not None

  def check_alive(self) -> None:
    """WorkerDied when a worker has died under this runtime (or cannot be reached)."""
    if self._stop_watch.is_set():
      return
    self._find_dead()
    if self.dead is not None:
      w = self.dead
      raise WorkerDied(
        f"the TFF worker (pid {w.pid}) died ({describe_exit(w.process.returncode)}); "
        f"rerun with --resume to continue from the last checkpoint (worker log: {w.log_path})"
      )
    if self.unreachable is not None:
      raise WorkerDied(
        f"the TFF worker at {self.unreachable} cannot be reached (for "
        f"{self.config.unreachable_after_s:g} s); rerun with --resume to continue from the "
        "last checkpoint, with --worker_addresses naming the workers to use"
      )

  @property
  def ships_data(self) -> bool:
    """Whether this runtime's workers get the hospitals' data inline (not from files)."""
    return self.context is not None and self.config.ships_data

  def traffic(self) -> dict[str, dict]:
    """Executor-service bytes sent to and received from each worker so far."""
    return {e.address: e.stub.traffic.snapshot() for e in self.endpoints}

  def call_intervals(self) -> dict[str, list]:
    """(method, start, end) of each worker's latest calls, on time.monotonic()."""
    return {e.address: list(e.stub.traffic.intervals) for e in self.endpoints}

  def _executor_factory(self, address: str | None):
    """Starts a worker (unless `address` is given) and returns its executor factory."""
    cfg = self.config
    worker = None
    if address is None:
      worker = Worker(
        cfg.worker_binary or default_worker_binary(), cfg.max_concurrent_computation_calls
      )
      self.workers.append(worker)
      address = worker.address
    channel = transport.channel(address, None if worker is not None else cfg.tls)
    self._channels.append(channel)
    connectivity = transport.Connectivity(channel, time.monotonic)
    stub = CountingStub(channel)
    timeout = cfg.ready_timeout_s if worker is not None else cfg.unreachable_after_s
    _wait_ready(stub, timeout, worker, address)
    self.endpoints.append(Endpoint(address, stub, connectivity, worker))

    def stack_fn(cardinalities):
      # Computations without client values still need a cardinality.
      cardinalities.setdefault(tff.CLIENTS, 0)
      if self._pool is not None:
        executor = ConcurrentRemoteExecutor(stub, self._pool)
      else:
        executor = tff.framework.RemoteExecutor(stub)
      executor.set_cardinalities(cardinalities)
      return executor

    return tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn)

  def close(self) -> None:
    """Stops every worker this runtime started. Safe to call twice."""
    self._stop_watch.set()
    for worker in self.workers:
      worker.stopping = True
    for channel in self._channels:
      channel.close()
    self._channels.clear()
    for worker in self.workers:
      worker.stop()
    self.workers.clear()
    self.endpoints.clear()
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
    self.context = None

  def __enter__(self) -> Runtime:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _set_no_context() -> None:
  # Not exported in TFF 0.87's public API; the version is pinned.
  from tensorflow_federated.python.core.impl.context_stack import runtime_error_context

  tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())


def start(config: RuntimeConfig | None = None) -> Runtime:
  """Starts (or returns) the process-wide runtime and installs its context."""
  global _ACTIVE
  if _ACTIVE is not None and _ACTIVE.context is not None:
    if config is None or config == _ACTIVE.config:
      # Another Runtime may have installed its context meanwhile: reinstall.
      tff.framework.set_default_context(_ACTIVE.context)
      return _ACTIVE
    _ACTIVE.close()
  _ACTIVE = Runtime(config or RuntimeConfig()).start()
  return _ACTIVE


def shutdown() -> None:
  """Stops the process-wide runtime, if any (also run at exit).

  Leaves no context installed: a computation called afterwards fails loudly
  instead of silently starting TFF's own, leaking worker.
  """
  global _ACTIVE
  if _ACTIVE is not None:
    _quiet_closed_channel_finalizers()
    _ACTIVE.close()
    _ACTIVE = None
  _set_no_context()


def _closed_channel(exc) -> bool:
  import grpc

  if isinstance(exc, grpc.RpcError):
    return "Channel closed" in str(exc)
  return isinstance(exc, ValueError) and "closed channel" in str(exc)


def _quiet_closed_channel_finalizers() -> None:
  """After the channels are closed, TFF's finalizers of values still alive (freed
  as a stopped run unwinds) try to dispose of them remotely and fail with
  "Channel closed!" or "Cannot invoke RPC on closed channel!"; Python prints
  each as "Exception ignored in" with a
  traceback (seen after a second Ctrl-C). Those, and only those, are dropped:
  there is nothing left to dispose of."""
  previous = sys.unraisablehook
  if getattr(previous, "quiet_closed_channels", False):
    return

  def hook(unraisable):
    if not _closed_channel(unraisable.exc_value):
      previous(unraisable)

  hook.quiet_closed_channels = True
  sys.unraisablehook = hook


def kill_workers() -> None:
  """SIGKILLs the process-wide runtime's workers without waiting on anything
  (for an immediate exit; they would also die with this process)."""
  if _ACTIVE is not None:
    _quiet_closed_channel_finalizers()
    for worker in _ACTIVE.workers:
      worker.stopping = True
      with contextlib.suppress(OSError):
        worker.process.kill()


def check_alive() -> None:
  """WorkerDied when a worker of the process-wide runtime died under it."""
  if _ACTIVE is not None:
    _ACTIVE.check_alive()


def traffic() -> dict[str, dict]:
  """Bytes sent to and received from each worker of the process-wide runtime."""
  return {} if _ACTIVE is None else _ACTIVE.traffic()


def ships_data() -> bool:
  """Whether the process-wide runtime's workers get the hospitals' data inline."""
  return _ACTIVE is not None and _ACTIVE.ships_data


def active() -> Runtime | None:
  """The process-wide runtime a binary started (None: none). Library code does
  not call this: it is handed the Runtime (program/loop.run's `rt`)."""
  return _ACTIVE if _ACTIVE is not None and _ACTIVE.context is not None else None


def worker_pids() -> list[int]:
  """PIDs of live workers started by the process-wide runtime."""
  if _ACTIVE is None:
    return []
  return [w.pid for w in _ACTIVE.workers if w.alive()]


# TFF installs at import a default context that would start its own worker
# (with our stdout) on first use, and whose unused ServiceManager raises in
# __del__ at interpreter exit. Replace it at once: computations then run only in
# a context started here.
_set_no_context()
atexit.register(shutdown)
