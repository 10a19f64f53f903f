"""Secure aggregation (SecAgg / SecAgg+) for Dopamine's masked sums.

Map of the subpackage:

* chacha.py: ChaCha20 (RFC 8439) in TensorFlow uint32 ops, the mask PRG that
  runs inside the hospitals' TF computations; Philox only as an insecure mode.
* shamir.py: t-of-n Shamir secret sharing over GF(2^521 - 1).
* masking.py: plain-TF masking of a hospital's codes mod 2**32 and the
  removal of revealed masks.
* parameters.py: SecAgg+'s degree and threshold from the threat model (semi-
  honest or malicious server) and their guarantee.
* config.py: SecAggConfig, one run's parameters checked against its claims.
* the pairing graphs and the check that a round hides every update are in
  dopamine_tff/graphs.py (shared with the plain secure sum).
* protocol.py: the parties and phases (X25519 + HKDF-SHA256 pair keys,
  self-mask keys, shares, unmasking with dropout recovery, abort below t).
* rounds.py: one FSCDP round around the protocol for either runtime.
"""
