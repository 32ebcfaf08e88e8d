"""The cryptographic core of secure aggregation (Bonawitz et al. 2017; SecAgg+, Bell et al.
2020) for secure buckets: pure functions and small value types, no I/O, no service wiring.

libsodium (through pynacl) is the only source of randomness and cryptography here; numpy only
does arithmetic. See docs/secagg.md for the formulas (bit width, graph degree, shares).
"""

from .errors import Problem, SecAggError
from .graph import (
    holders,
    neighbour_graph,
    ring_order,
    safe_threshold,
    share_xs,
    suggested_degree,
)
from .kdf import MaskKeyPair, pair_seed, public_key
from .keystream import chacha20_keystream, expand_bytes, expand_ring, expand_uniform
from .masking import mask_input, pair_mask, self_mask, unmask
from .member import MemberSecrets, Released, ShareKind, ShareLedger
from .noise import member_variance, noise_bound, poisson_table, skellam_noise
from .quantize import (
    bits_needed,
    clip_l2,
    dequantize,
    from_ring,
    member_bound,
    quantize,
    stochastic_round,
    to_ring,
)
from .recovery import Secrets, rebuild
from .sealing import SharePair, open_pair, seal_pair
from .shamir import Share, interpolate_at_zero, reconstruct, share

__all__ = [
    "MaskKeyPair", "MemberSecrets", "Problem", "Released", "SecAggError", "Secrets", "Share",
    "ShareKind", "ShareLedger", "SharePair", "bits_needed", "chacha20_keystream", "clip_l2",
    "dequantize", "expand_bytes", "expand_ring", "expand_uniform", "from_ring", "holders",
    "interpolate_at_zero", "mask_input", "member_bound", "member_variance", "neighbour_graph",
    "noise_bound", "open_pair", "pair_mask", "pair_seed", "poisson_table", "public_key",
    "quantize", "rebuild", "reconstruct", "ring_order", "safe_threshold", "seal_pair", "self_mask",
    "share",
    "share_xs", "skellam_noise", "stochastic_round", "suggested_degree", "to_ring", "unmask",
]
