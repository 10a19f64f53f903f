"""Secure aggregation (SecAgg / SecAgg+) for Dopamine's masked sums.

Map of the subpackage:

* chacha.py: ChaCha20 (RFC 8439) in TensorFlow uint32 ops, the mask PRG that
  runs inside the hospitals' TF computations; Philox only as an insecure mode.
* shamir.py: t-of-n Shamir secret sharing over GF(2^521 - 1).
* masking.py: plain-TF masking of a hospital's codes mod 2**32 and the
  removal of revealed masks.
* config.py: SecAggConfig, the parameters (degree, threshold) from the threat
  model, their guarantee, the neighbour graphs and the hiding check.
* protocol.py: the parties and phases (X25519 + HKDF-SHA256 pair keys,
  self-mask keys, shares, unmasking with dropout recovery, abort below t).
* rounds.py: one FSCDP round around the protocol for either runtime.
"""
