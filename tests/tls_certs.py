"""Test helper: throw-away TLS certificates (a CA, a server and a client it signs)."""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name):
  return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory, stem, cert, key):
  cert_path = os.path.join(directory, f"{stem}.pem")
  key_path = os.path.join(directory, f"{stem}.key")
  with open(cert_path, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(key_path, "wb") as f:
    f.write(
      key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
      )
    )
  return cert_path, key_path


def _cert(subject, key, issuer, issuer_key, *, ca, names=()):
  now = datetime.datetime.now(datetime.UTC)
  builder = (
    x509.CertificateBuilder()
    .subject_name(_name(subject))
    .issuer_name(_name(issuer))
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
  )
  if names:
    builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
  return builder.sign(issuer_key, hashes.SHA256())


def make(directory, ca_name="test CA"):
  """Writes ca.pem, server.pem/.key (for localhost and 127.0.0.1) and
  client.pem/.key, both signed by the CA; returns their paths by stem."""
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
  paths = {"ca": _write(directory, "ca", ca, ca_key)[0]}
  names = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
  for stem, extra in (("server", names), ("client", ())):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(stem, key, ca_name, ca_key, ca=False, names=extra)
    paths[stem], paths[f"{stem}_key"] = _write(directory, stem, cert, key)
  return paths
