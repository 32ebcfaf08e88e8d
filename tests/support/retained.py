"""What a fresh subscriber sees of the retained model topics."""

from __future__ import annotations

import asyncio

from orchestrator.broker import MosquittoBroker
from tests.support.observer import observer
from tests.support.service_config import FED


async def retained_models(broker: MosquittoBroker, *, fed: str = FED, expect: int = 2,
                          within: float = 10) -> dict[str, bytes]:
    """Retained ``fl/{fed}/model/#`` messages as a fresh subscriber (an observer account)
    sees them: ``{topic: payload}``, once ``expect`` non-empty ones arrived."""
    got: dict[str, bytes] = {}
    async with observer(broker) as client:
        await client.subscribe(f"fl/{fed}/model/#", qos=1)
        async with asyncio.timeout(within):
            async for message in client.messages:
                if message.payload:
                    got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                if len(got) >= expect:
                    break
    return got


async def all_retained(broker: MosquittoBroker, *, fed: str = FED, quiet: float = 0.5
                       ) -> dict[str, bytes]:
    """Every non-empty retained ``fl/{fed}/model/#`` message: subscribe and collect until
    nothing arrives for ``quiet`` seconds."""
    got: dict[str, bytes] = {}
    async with observer(broker) as client:
        await client.subscribe(f"fl/{fed}/model/#", qos=1)
        messages = aiter(client.messages)
        while True:
            try:
                async with asyncio.timeout(quiet):
                    message = await anext(messages)
            except TimeoutError:
                return got
            if message.payload:
                got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
