"""Hard size limits, checked before anything is allocated.

One frozen value object travels to every decoder, so a deployment can tighten limits (e.g. for
an 8 KiB-RAM sensor gateway) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_envelope_bytes: int = 8 * MiB
    """An MQTT payload as received (also the broker's ``max_packet_size`` in broker_config)."""
    max_body_bytes: int = 64 * MiB
    """A message body after zstd decompression: zstd bombs stop here."""
    max_tensors: int = 256
    max_tensor_elements: int = 16_000_000
    max_total_elements: int = 32_000_000
    max_rank: int = 8
    max_batch_entries: int = 512
    max_string: int = 4096
    max_list: int = 100_000
    max_future_skew_ms: int = 5 * 60 * 1000
    """A timestamp further ahead of the receiver's clock is refused (``future_timestamp``)."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()
