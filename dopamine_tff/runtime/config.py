"""How the rounds are executed: the runtime's configuration (RuntimeConfig)."""

from __future__ import annotations

import dataclasses
import os

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
