"""How the service feeds its :class:`~orchestrator.metrics.Metrics` without cluttering its code.

The service already counts what happens in ``self.counters`` (``accepted``, ``duplicate``,
``rejected.<reason>``...). :class:`MeteredCounter` is that counter, forwarding each increment
of the ingestion keys to the metrics, so counting and metering stay one statement.
:func:`observe_group` adds what a counter cannot see: batch sizes and receipt-to-ack latency.
"""

from __future__ import annotations

from collections import Counter

from orchestrator.ingest.pipeline import GroupResult
from orchestrator.metrics.prometheus import Metrics

__all__ = ["MeteredCounter", "observe_group"]

_REJECTED = "rejected."
_QUARANTINED = "quarantined."
_RATE_REFUSED = "refused.rate."


class MeteredCounter(Counter[str]):
    """A ``Counter`` whose increments of ``accepted``, ``duplicate``, ``rejected.<reason>``
    and ``quarantined.<reason>`` also count as received, accepted, duplicate or rejected
    updates in ``metrics`` (a quarantined update was received and accepted before), and of
    ``refused.rate.<lane>`` as messages the rate limits refused.

    Only increments are forwarded (the service never decrements); other keys are counted
    here only.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def __setitem__(self, key: str, value: int) -> None:
        delta = value - self.get(key, 0)
        super().__setitem__(key, value)
        if delta > 0:
            self._meter(key, delta)

    def _meter(self, key: str, n: int) -> None:
        m = self._metrics
        if key == "accepted":
            m.received(n)
            m.accepted(n)
        elif key == "duplicate":
            m.received(n)
            m.duplicate(n)
        elif key.startswith(_REJECTED):
            m.received(n)
            m.rejected(key[len(_REJECTED):], n)
        elif key.startswith(_QUARANTINED):
            # accepted (and counted as received) first, held out by screening later
            m.rejected(key[len(_QUARANTINED):], n)
        elif key.startswith(_RATE_REFUSED):
            m.refused(key[len(_RATE_REFUSED):], n)


def observe_group(metrics: Metrics, result: GroupResult, now_ms: int, *,
                  buffered: int | None = None) -> None:
    """After a committed (and acked) group: each batch's size and receipt-to-ack latency,
    and the buffer fill when given."""
    for batch in result.batches:
        metrics.observe_batch(len(batch.outcomes))
        metrics.observe_ingest_latency(max(0, now_ms - batch.batch.received_ms) / 1000)
    if buffered is not None:
        metrics.set_buffer(buffered)
