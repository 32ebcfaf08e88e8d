"""The flooding device of ``fedmq bench flood``, in its own process: junk as fast as it can.

    python -m fedmq.bench._flooder HOST PORT USERNAME PASSWORD TOPIC COUNT

Waits for ``go`` on stdin, publishes up to COUNT random 64-byte payloads (QoS 0) on TOPIC
with the device's own valid credentials, and stops early when the broker cuts it off. Prints
one JSON line: ``{"sent", "seconds", "disconnected"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aiomqtt


async def _flood(host: str, port: int, username: str, password: str, topic: str,
                 count: int) -> dict[str, object]:
    sent, disconnected, started = 0, False, time.monotonic()
    try:
        async with aiomqtt.Client(host, port, username=username, password=password,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            print(json.dumps({"ready": True}), flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            started = time.monotonic()
            while sent < count:
                await client.publish(topic, os.urandom(64), qos=0)
                sent += 1
            # stay connected until the broker cuts us off (or long enough to see it does not)
            async with asyncio.timeout(60):
                async for _ in client.messages:
                    pass
    except aiomqtt.MqttError:
        disconnected = True
    except TimeoutError:
        pass
    return {"sent": sent, "seconds": round(time.monotonic() - started, 3),
            "disconnected": disconnected}


def main(argv: list[str]) -> int:
    host, port, username, password, topic, count = argv
    print(json.dumps(asyncio.run(_flood(host, int(port), username, password, topic,
                                        int(count)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
