"""The cryptographic core of secure aggregation (Bonawitz et al. 2017; SecAgg+, Bell et al.
2020) for secure buckets: pure functions and small value types, no I/O, no service wiring.

libsodium (through pynacl) is the only source of randomness and cryptography here; numpy only
does arithmetic. See docs/secagg.md for the formulas (bit width, graph degree, shares).
"""

from .errors import Problem, SecAggError
from .kdf import MaskKeyPair, pair_seed, public_key
from .keystream import chacha20_keystream, expand_bytes, expand_ring, expand_uniform
from .shamir import Share, interpolate_at_zero, reconstruct, share

__all__ = [
    "MaskKeyPair", "Problem", "SecAggError", "Share", "chacha20_keystream", "expand_bytes",
    "expand_ring", "expand_uniform", "interpolate_at_zero", "pair_seed", "public_key",
    "reconstruct", "share",
]
