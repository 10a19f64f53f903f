"""Worker addresses, the plain-transport refusal, TLS settings, connectivity."""

import grpc
import pytest

from dopamine_tff import transport


@pytest.mark.parametrize(
  "address,host,port",
  [("localhost:80", "localhost", 80), ("[::1]:9", "::1", 9), ("10.0.0.2:8000", "10.0.0.2", 8000)],
)
def test_split_address(address, host, port):
  assert transport.split_address(address) == (host, port)


@pytest.mark.parametrize("address", ["localhost", ":80", "host:", "host:x", "host:0", "h:70000"])
def test_a_malformed_address_is_refused_naming_it(address):
  with pytest.raises(ValueError, match="is not host:port"):
    transport.split_address(address)


@pytest.mark.parametrize(
  "address,loopback",
  [
    ("localhost:1", True),
    ("LOCALHOST:1", True),
    ("127.0.0.1:1", True),
    ("127.8.0.3:1", True),
    ("[::1]:1", True),
    ("10.0.0.1:1", False),
    ("[fe80::1]:1", False),
    ("worker7:1", False),  # names are not looked up: only loopback literals count
    ("localhost.example.org:1", False),
  ],
)
def test_loopback(address, loopback):
  assert transport.is_loopback(address) is loopback


def test_plain_channels_to_another_host_are_refused_unless_asked_for(tmp_path):
  transport.check_addresses(["localhost:1", "127.0.0.1:2"], None, False)
  with pytest.raises(ValueError, match="10.0.0.9:8000 is not on this host"):
    transport.check_addresses(["localhost:1", "10.0.0.9:8000"], None, False)
  transport.check_addresses(["10.0.0.9:8000"], None, True)  # --insecure_transport
  ca = tmp_path / "ca.pem"
  ca.write_text("x")
  tls = transport.TlsConfig(ca_cert=str(ca))
  transport.check_addresses(["10.0.0.9:8000"], tls, False)
  with pytest.raises(ValueError, match="pick one"):
    transport.check_addresses(["10.0.0.9:8000"], tls, True)


def test_tls_files_must_exist_and_pair(tmp_path):
  ca = tmp_path / "ca.pem"
  ca.write_text("x")
  with pytest.raises(ValueError, match="ca_cert '/no/ca.pem' does not exist"):
    transport.TlsConfig(ca_cert="/no/ca.pem")
  with pytest.raises(ValueError, match="needs its key"):
    transport.TlsConfig(ca_cert=str(ca), client_cert=str(ca))


class _FakeChannel:
  def subscribe(self, callback, try_to_connect):
    self.callback = callback


def test_connectivity_counts_only_an_unbroken_failure():
  now = [0.0]
  channel = _FakeChannel()
  c = transport.Connectivity(channel, lambda: now[0])
  S = grpc.ChannelConnectivity
  channel.callback(S.READY)
  now[0] = 5.0
  assert c.failing_for() == 0.0
  channel.callback(S.IDLE)  # the connection dropped: not yet a failure
  channel.callback(S.CONNECTING)
  now[0] = 6.0
  assert c.failing_for() == 0.0
  channel.callback(S.TRANSIENT_FAILURE)
  channel.callback(S.CONNECTING)  # retrying does not reset the clock
  channel.callback(S.TRANSIENT_FAILURE)
  now[0] = 16.0
  assert c.failing_for() == 10.0
  channel.callback(S.READY)  # it came back
  assert c.failing_for() == 0.0


def test_traffic_adds_up():
  t = transport.Traffic()
  t.add(10, 3)
  t.add(5, 1)
  assert t.snapshot() == {"sent": 15, "received": 4, "calls": 2}
