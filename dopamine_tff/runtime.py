"""The one place that creates, configures and tears down TFF's execution context.

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
quantisation and clipping are real, the cryptography is not (see README,
"Threat model").

Users can instead point the runtime at running workers (``addresses``): one
(e.g. a build of TFF's worker with CUDA), or several, on this host or others
(``experiments/tff_worker.py`` starts one); each round's hospitals are then
split across them. Channels to other hosts use TLS unless the user opts out
(dopamine_tff/transport.py). Or it can start another worker binary
(``worker_binary``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import portpicker
import tensorflow_federated as tff

from dopamine_tff import transport
from dopamine_tff import worker_process

default_worker_binary = worker_process.default_worker_binary  # TFF's CPU build


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How the TFF runtime is set up.

  Attributes:
    max_concurrent_computation_calls: limit of concurrent client computations
      inside one worker; <= 0 means no limit.
    worker_binary: path of the worker to start (default: TFF's CPU build).
    addresses: ``host:port`` of running workers to use instead of starting
      any (e.g. a CUDA build on a GPU host, or workers on other hosts); with
      several, each round's hospitals are split across them in equal shares.
      Not stopped by us.
    num_workers: start this many local workers and split the clients of
      every round across them (TFF's mergeable computation form: each worker
      sums its share of hospitals, the partial sums are merged).
    ready_timeout_s: how long to wait for a worker we started to answer.
    tls: TLS for the channels to `addresses` (required for an address that
      is not loopback, unless `insecure_transport`).
    insecure_transport: allow plain channels to other hosts.
    unreachable_after_s: a worker at `addresses` that cannot be reached for
      this long (at the start, or mid-run) ends the run, naming it.
    data_transport: how the hospitals' data reach the workers: "files" (the
      worker reads the run's shard files: the workers must see this host's
      file system), "inline" (the data travel in each round's request), or
      "auto" (files for workers on this host, inline when any is remote).
  """

  max_concurrent_computation_calls: int = -1
  worker_binary: str | None = None
  addresses: tuple[str, ...] = ()
  ready_timeout_s: float = 60.0
  num_workers: int = 1
  tls: transport.TlsConfig | None = None
  insecure_transport: bool = False
  unreachable_after_s: float = 20.0
  data_transport: str = "auto"

  def __post_init__(self):
    if self.ready_timeout_s <= 0:
      raise ValueError(f"ready_timeout_s must be > 0, got {self.ready_timeout_s}")
    if self.worker_binary is not None and not os.path.isfile(self.worker_binary):
      raise ValueError(f"worker_binary {self.worker_binary!r} does not exist")
    if isinstance(self.addresses, str):
      raise ValueError("addresses must be a sequence of host:port")
    object.__setattr__(self, "addresses", tuple(self.addresses))
    transport.check_addresses(self.addresses, self.tls, self.insecure_transport)
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
    if self.num_workers > 1 and self.addresses:
      raise ValueError(
        "num_workers > 1 starts local workers; it cannot be combined with worker addresses"
      )
    if self.tls is not None and not self.addresses:
      raise ValueError("TLS is for the channels to worker addresses; none is given")
    if self.unreachable_after_s <= 0:
      raise ValueError(f"unreachable_after_s must be > 0, got {self.unreachable_after_s}")
    if self.data_transport not in ("auto", "files", "inline"):
      raise ValueError(f"data_transport must be auto, files or inline, got {self.data_transport!r}")

  @property
  def ships_data(self) -> bool:
    """Whether the hospitals' data travel inline in the requests."""
    if self.data_transport != "auto":
      return self.data_transport == "inline"
    return any(not transport.is_loopback(a) for a in self.addresses)


class WorkerDied(RuntimeError):
  """A TFF worker this process started exited while the run needed it, or a
  worker at an address could not be reached."""


def describe_exit(returncode: int) -> str:
  """'signal 9 (SIGKILL)' or 'exit code 3'."""
  if returncode is not None and returncode < 0:
    try:
      return f"signal {-returncode} ({signal.Signals(-returncode).name})"
    except ValueError:
      return f"signal {-returncode}"
  return f"exit code {returncode}"


class Worker:
  """One C++ worker process that this Python process started and owns."""

  def __init__(self, binary: str, max_concurrent_computation_calls: int):
    if threading.current_thread() is not threading.main_thread():
      # PR_SET_PDEATHSIG fires when the *thread* that forked exits.
      raise RuntimeError("TFF workers must be started from the main thread")
    self.port = portpicker.pick_unused_port()
    self.log_path = os.path.join(
      tempfile.gettempdir(), f"dopamine_tff_worker_{os.getpid()}_{self.port}.log"
    )
    log = open(self.log_path, "wb")  # noqa: SIM115 (handed to the child)
    try:
      self.process = subprocess.Popen(
        [
          binary,
          f"--port={self.port}",
          f"--max_concurrent_computation_calls={max_concurrent_computation_calls}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        close_fds=True,
        preexec_fn=worker_process.child_setup(),
      )
    finally:
      log.close()
    self.address = f"localhost:{self.port}"
    self.stopping = False  # set before this process stops it on purpose

  @property
  def pid(self) -> int:
    return self.process.pid

  def alive(self) -> bool:
    return self.process.poll() is None

  def stop(self, timeout_s: float = 5.0) -> None:
    """Terminates the worker (SIGTERM, then SIGKILL), reaps it and removes its log.

    The log of a worker that died by itself is kept: the error names it.
    """
    died = self.process.poll() is not None and not self.stopping
    self.stopping = True
    if died:
      return
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=timeout_s)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    with contextlib.suppress(OSError):
      os.remove(self.log_path)


def _counted(name):
  def call(self, request):
    t0 = time.monotonic()
    response = getattr(super(CountingStub, self), name)(request)
    self.traffic.add(request.ByteSize(), response.ByteSize(), (name, t0, time.monotonic()))
    return response

  call.__name__ = name
  return call


class CountingStub(tff.framework.RemoteExecutorGrpcStub):
  """TFF's stub, counting the serialized size of every request and response
  (the payload; gRPC framing and TLS records add a little)."""

  def __init__(self, grpc_channel: grpc.Channel):
    super().__init__(grpc_channel)
    self.traffic = transport.Traffic()

  get_executor = _counted("get_executor")
  create_value = _counted("create_value")
  create_struct = _counted("create_struct")
  create_call = _counted("create_call")
  create_selection = _counted("create_selection")
  compute = _counted("compute")
  dispose = _counted("dispose")
  dispose_executor = _counted("dispose_executor")


class ConcurrentRemoteExecutor(tff.framework.RemoteExecutor):
  """TFF's RemoteExecutor, whose calls let other workers' calls run meanwhile.

  TFF's coroutines make blocking gRPC calls without awaiting anything, so in
  the mergeable context (several workers) each worker's share of a round ran
  to completion before the next worker's began: two workers took the sum of
  their times. Here each call runs in a thread, so the event loop moves on to
  the next worker while one computes. The threads come from the runtime's
  pool, sized to its workers (asyncio's default pool has cpu_count + 4).
  """

  def __init__(self, stub, pool: concurrent.futures.ThreadPoolExecutor):
    super().__init__(stub)
    self._pool = pool

  async def _in_thread(self, coro):
    return await asyncio.get_running_loop().run_in_executor(self._pool, asyncio.run, coro)

  async def create_value(self, value, type_spec=None):
    return await self._in_thread(super().create_value(value, type_spec))

  async def create_call(self, comp, arg=None):
    return await self._in_thread(super().create_call(comp, arg))

  async def create_struct(self, elements):
    return await self._in_thread(super().create_struct(elements))

  async def create_selection(self, source, index):
    return await self._in_thread(super().create_selection(source, index))

  async def _compute(self, value_ref, type_spec):
    return await self._in_thread(super()._compute(value_ref, type_spec))


def _wait_ready(stub, timeout_s: float, worker: Worker | None, address: str) -> None:
  deadline = time.monotonic() + timeout_s
  while not stub.is_ready:
    if worker is not None and not worker.alive():
      raise WorkerDied(
        f"the TFF worker failed to start ({describe_exit(worker.process.returncode)}); "
        f"see {worker.log_path}"
      )
    if time.monotonic() > deadline:
      if worker is None:
        raise WorkerDied(
          f"the TFF worker at {address} cannot be reached (not ready after {timeout_s:g} s)"
        )
      raise RuntimeError(f"TFF worker not ready after {timeout_s} s")
    time.sleep(0.05)


@dataclasses.dataclass
class Endpoint:
  """One worker the runtime talks to: started here (`worker`) or at an address."""

  address: str
  stub: CountingStub
  connectivity: transport.Connectivity
  worker: Worker | None = None


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


def compile_for_simulation(comp):
  """Replaces secure intrinsics by their plain bodies, then compiles to native form.

  The C++ worker cannot run ``federated_secure_sum_bitwidth``; TFF's test
  compiler rewrites it into a plain integer sum, which is what we simulate.

  Unlike ``tff.backends.native.desugar_and_transform_to_native`` we do not run
  Grappler's AGGRESSIVE rewrites at compile time: they reorder float
  arithmetic, and then the TFF runtime and the in-process runtime (same TF
  functions, default optimisations) would no longer give bit-identical weights.
  The worker still applies TensorFlow's default graph optimisations.
  """
  # Internal modules of the pinned TFF 0.87 (the steps of
  # desugar_and_transform_to_native, minus its Grappler configuration).
  from tensorflow_federated.python.core.environments.tensorflow_backend import (
    tensorflow_tree_transformations,
  )
  from tensorflow_federated.python.core.impl.computation import computation_impl
  from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

  comp = tff.backends.test.replace_secure_intrinsics_with_bodies(comp)
  desugared, _ = tensorflow_tree_transformations.replace_intrinsics_with_bodies(
    comp.to_building_block()
  )
  return tff.backends.native.transform_to_native_form(
    computation_impl.ConcreteComputation(
      computation_proto=desugared.proto, context_stack=context_stack_impl.context_stack
    ),
    grappler_config=None,
  )


def _compile_mergeable(comp):
  """Secure intrinsics to their bodies, then TFF's mergeable computation form.

  The mergeable compiler refuses secure intrinsics; after the rewrite the
  integer code sums are plain sums, which merge exactly across workers.
  """
  from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler

  comp = tff.backends.test.replace_secure_intrinsics_with_bodies(comp)
  return mergeable_comp_compiler.compile_to_mergeable_comp_form(comp)


_ACTIVE: Runtime | None = None


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
  return _ACTIVE is not None and _ACTIVE.context is not None and _ACTIVE.config.ships_data


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
