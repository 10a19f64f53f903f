"""How the driver talks to TFF workers: addresses, TLS, keep-alives, byte counts.

The client datasets of a round (the simulated hospitals' images) and the model
travel to the workers in these channels, so a worker on another host is
reached over TLS unless the user says ``--insecure_transport``. A loopback
address (``localhost``, ``127.0.0.0/8``, ``::1``) never leaves this host and
may be plain.

The server side (a worker host serving TLS) is dopamine_tff/worker_host.py.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import os
import threading

import grpc

MAX_MESSAGE = 2**31 - 1
GRPC_OPTIONS = (
  ("grpc.max_message_length", MAX_MESSAGE),
  ("grpc.max_receive_message_length", MAX_MESSAGE),
  ("grpc.max_send_message_length", MAX_MESSAGE),
)
# A host that vanishes without closing its connections (power, network) is seen
# by keep-alive pings. The C++ worker's gRPC server accepts a ping every 5 min
# without data by default and answers faster ones with GOAWAY, so pings are
# sent only that often; a dead peer then shows within about 5.5 minutes.
KEEPALIVE_OPTIONS = (
  ("grpc.keepalive_time_ms", 300_000),
  ("grpc.keepalive_timeout_ms", 20_000),
  ("grpc.keepalive_permit_without_calls", 0),
)


def split_address(address: str) -> tuple[str, int]:
  """('host', port) of 'host:port' or '[v6]:port' (ValueError naming the address)."""
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"worker address {address!r} is not host:port")
  if host.startswith("[") and host.endswith("]"):
    host = host[1:-1]
  return host, int(port)


def is_loopback(address: str) -> bool:
  """Whether `address` names this host's loopback interface (no name lookup:
  only 'localhost' and literal loopback IPs count)."""
  host, _ = split_address(address)
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


@dataclasses.dataclass(frozen=True)
class TlsConfig:
  """TLS for the driver's channels to remote workers.

  Attributes:
    ca_cert: PEM file of the certificate authority (or the self-signed server
      certificate) that the workers' certificates must chain to.
    client_cert: PEM certificate this driver presents (mutual TLS); with
      client_key, or neither.
    client_key: PEM private key of client_cert.
    server_name: the name the workers' certificates must carry, when it is
      not the host of the address (e.g. addresses by IP, certificates by name).
  """

  ca_cert: str
  client_cert: str | None = None
  client_key: str | None = None
  server_name: str | None = None

  def __post_init__(self):
    for name in ("ca_cert", "client_cert", "client_key"):
      path = getattr(self, name)
      if path is not None and not os.path.isfile(path):
        raise ValueError(f"TLS {name} {path!r} does not exist")
    if (self.client_cert is None) != (self.client_key is None):
      raise ValueError("a TLS client certificate needs its key, and a key its certificate")

  def credentials(self) -> grpc.ChannelCredentials:
    def read(path):
      if path is None:
        return None
      with open(path, "rb") as f:
        return f.read()

    return grpc.ssl_channel_credentials(
      root_certificates=read(self.ca_cert),
      private_key=read(self.client_key),
      certificate_chain=read(self.client_cert),
    )


def check_addresses(addresses, tls: TlsConfig | None, insecure: bool) -> None:
  """Refuses a list the transport cannot cover (ValueError, one line)."""
  seen = set()
  for a in addresses:
    split_address(a)
    if a in seen:
      raise ValueError(f"worker address {a} is listed twice")
    seen.add(a)
  remote = [a for a in addresses if not is_loopback(a)]
  if remote and tls is None and not insecure:
    raise ValueError(
      f"worker {remote[0]} is not on this host: the hospitals' data would cross the network "
      "in the clear; give --worker_tls_ca (TLS) or --insecure_transport"
    )
  if tls is not None and insecure:
    raise ValueError("--insecure_transport and TLS: pick one")


def channel(address: str, tls: TlsConfig | None) -> grpc.Channel:
  """A channel to a worker: TLS when `tls` is given, else plain."""
  options = [*GRPC_OPTIONS, *KEEPALIVE_OPTIONS]
  if tls is None:
    return grpc.insecure_channel(address, options)
  if tls.server_name:
    options.append(("grpc.ssl_target_name_override", tls.server_name))
  return grpc.secure_channel(address, tls.credentials(), options)


class Traffic:
  """Bytes of the executor-service messages to and from one worker, and when
  its latest calls ran (to see that workers compute at the same time)."""

  def __init__(self, keep_intervals: int = 256):
    self._lock = threading.Lock()
    self.sent = 0
    self.received = 0
    self.calls = 0
    self.intervals = collections.deque(maxlen=keep_intervals)  # (method, start, end)

  def add(self, sent: int, received: int, interval: tuple | None = None) -> None:
    with self._lock:
      self.sent += sent
      self.received += received
      self.calls += 1
      if interval is not None:
        self.intervals.append(interval)

  def snapshot(self) -> dict:
    with self._lock:
      return {"sent": self.sent, "received": self.received, "calls": self.calls}


class Connectivity:
  """Follows a channel's connectivity (gRPC callbacks), for the watchdog.

  `failing_for()` is how long the channel has been trying and failing to reach
  its worker (CONNECTING / TRANSIENT_FAILURE with a failure seen) without
  being READY in between; 0 while it is READY or IDLE.
  """

  def __init__(self, grpc_channel: grpc.Channel, clock):
    self._clock = clock
    self._lock = threading.Lock()
    self.state = None
    self._failing_since = None
    grpc_channel.subscribe(self._update, try_to_connect=False)

  def _update(self, state) -> None:
    with self._lock:
      self.state = state
      if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        if self._failing_since is None:
          self._failing_since = self._clock()
      elif state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE):
        self._failing_since = None

  def failing_for(self) -> float:
    with self._lock:
      return 0.0 if self._failing_since is None else self._clock() - self._failing_since
