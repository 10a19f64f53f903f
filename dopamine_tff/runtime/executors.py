"""Remote executors over the workers: traffic counting, concurrent calls, readiness."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time

import grpc
import tensorflow_federated as tff

from dopamine_tff import transport
from dopamine_tff.runtime import workers as workers_lib


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


def _wait_ready(stub, timeout_s: float, worker: workers_lib.Worker | None, address: str) -> None:
  deadline = time.monotonic() + timeout_s
  while not stub.is_ready:
    if worker is not None and not worker.alive():
      raise workers_lib.WorkerDied(
        f"the TFF worker failed to start ({workers_lib.describe_exit(worker.process.returncode)}); "
        f"see {worker.log_path}"
      )
    if time.monotonic() > deadline:
      if worker is None:
        raise workers_lib.WorkerDied(
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
  worker: workers_lib.Worker | None = None
