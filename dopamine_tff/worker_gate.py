"""The gate in front of a served TFF worker: who may send it computations.

A TFF worker executes whatever computation it is sent, as the user that runs
it: file system, network and all. So whoever reaches a worker's port runs
code on its host. worker_host.py keeps the worker's own port out of reach
(a private network namespace) and serves this gate instead, a gRPC proxy that
forwards each executor-service call, bytes unchanged, to the worker, and only
from the drivers it names:

* TLS with client certificates (``client_ca``) proves a client holds a key
  the CA certified; every host of a one-CA deployment holds such a key, so a
  chain check alone lets one compromised worker run code on every other.
* ``allowed_clients`` pins the driver: the SHA-256 fingerprints of the client
  certificates whose calls are forwarded (what ``openssl x509 -noout
  -fingerprint -sha256`` prints); any other certificate's calls are refused
  with PERMISSION_DENIED before they reach the worker.
"""

from __future__ import annotations

import string
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes
import grpc

SERVICE = "/tensorflow_federated.v0.ExecutorGroup/"


def parse_fingerprint(text: str) -> str:
  """A SHA-256 certificate fingerprint as 64 lower-case hex digits.

  Accepts 'AB:CD:...' (openssl), 'abcd...', and either with a 'sha256:' or
  'SHA256 Fingerprint=' prefix. ValueError naming the text otherwise.
  """
  value = text.strip()
  for prefix in ("sha256 fingerprint=", "sha256:"):
    if value.lower().startswith(prefix):
      value = value[len(prefix) :]
  value = value.replace(":", "").lower()
  if len(value) != 64 or any(c not in string.hexdigits for c in value):
    raise ValueError(
      f"allowed client {text!r} is not a SHA-256 certificate fingerprint (64 hex digits; "
      "openssl x509 -noout -fingerprint -sha256 -in driver.pem prints it)"
    )
  return value


def fingerprint_of_pem(pem: bytes) -> str:
  """The SHA-256 fingerprint of a PEM certificate's DER encoding (lower-case hex)."""
  return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


class Gate(grpc.GenericRpcHandler):
  """Forwards executor-service calls to `channel`, from allowed clients only.

  Args:
    channel: the worker's (plain) channel.
    allowed: fingerprints of the client certificates let through; empty
      means every client that completed the transport's handshake.
  """

  def __init__(self, channel: grpc.Channel, allowed: frozenset[str] = frozenset()):
    self._channel = channel
    self._allowed = allowed
    self._handlers = {}
    self._seen: dict[bytes, str] = {}  # PEM -> fingerprint, computed once per certificate
    self._lock = threading.Lock()
    self.refused = 0

  def _admits(self, context: grpc.ServicerContext) -> bool:
    if not self._allowed:
      return True
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
      return False
    with self._lock:
      if pems[0] not in self._seen:
        self._seen[pems[0]] = fingerprint_of_pem(pems[0])
      return self._seen[pems[0]] in self._allowed

  def service(self, details):
    method = details.method
    if not method.startswith(SERVICE):
      return None
    with self._lock:
      if method not in self._handlers:
        call = self._channel.unary_unary(method)  # no (de)serializers: bytes

        def handle(request, context, call=call):
          if not self._admits(context):
            with self._lock:
              self.refused += 1
            context.abort(
              grpc.StatusCode.PERMISSION_DENIED,
              "this worker runs only its pinned driver's computations",
            )
          try:
            return call(request)
          except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")

        self._handlers[method] = grpc.unary_unary_rpc_method_handler(handle)
      return self._handlers[method]
