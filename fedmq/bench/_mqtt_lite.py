"""A minimal MQTT 3.1.1 client on asyncio streams, for load generation only.

Thousands of full clients (aiomqtt on paho, a thread-free but callback-heavy stack) cost more
CPU than the system under test; this one encodes CONNECT, SUBSCRIBE, PUBLISH (QoS 0/1) and
DISCONNECT by hand and reads incoming packets only to find PUBLISHes. It is not a general
client: no QoS 2, no reconnect, no keepalive pings (the load publishes more often than the
keepalive).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from fedmq.errors import ToolError

__all__ = ["LiteClient", "MqttLiteError"]

_CONNECT, _CONNACK, _PUBLISH, _SUBSCRIBE, _DISCONNECT = 1, 2, 3, 8, 14


class MqttLiteError(ToolError, ConnectionError):
    """The broker refused or dropped the connection."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _varint(len(body)) + body


class LiteClient:
    """One MQTT session; :meth:`run_reader` must run as a task while the client is used."""

    def __init__(self, client_id: str, username: str, password: str, *,
                 keepalive_s: int = 60,
                 on_publish: Callable[[str, bytes], None] | None = None) -> None:
        self._client_id = client_id
        self._username = username
        self._password = password
        self._keepalive_s = keepalive_s
        self._on_publish = on_publish
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self.connected = False

    async def connect(self, host: str, port: int, *, will: tuple[str, bytes] | None = None,
                      timeout_s: float = 30.0) -> None:
        self._reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout_s)
        self._writer = writer
        flags = 0x80 | 0x40 | 0x02  # username, password, clean session
        payload = _str(self._client_id)
        if will is not None:
            flags |= 0x04 | (1 << 3) | 0x20  # will, QoS 1, retained
            payload += _str(will[0]) + _str(will[1])
        payload += _str(self._username) + _str(self._password)
        header = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", self._keepalive_s)
        writer.write(_packet(_CONNECT, 0, header + payload))
        await writer.drain()
        kind, body = await asyncio.wait_for(self._read_packet(), timeout_s)
        if kind != _CONNACK or len(body) < 2 or body[1] != 0:
            raise MqttLiteError(f"{self._client_id}: connection refused ({body.hex()})")
        self.connected = True

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        body = struct.pack("!H", self._packet_id()) + _str(topic) + bytes([qos])
        await self._send(_packet(_SUBSCRIBE, 0x02, body))

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0,
                      retain: bool = False) -> None:
        body = _str(topic)
        if qos:
            body += struct.pack("!H", self._packet_id())
        await self._send(_packet(_PUBLISH, (qos << 1) | int(retain), body + payload))

    async def disconnect(self) -> None:
        if self._writer is None:
            return
        try:
            if self.connected:
                self._writer.write(_packet(_DISCONNECT, 0, b""))
                await self._writer.drain()
        except ConnectionError:
            pass
        finally:
            self.connected = False
            self._writer.close()

    async def run_reader(self) -> None:
        """Read packets until the connection ends; hand each PUBLISH to ``on_publish``
        (acks of our QoS 1 publishes and of the subscription are simply read past)."""
        try:
            while True:
                kind, body = await self._read_packet()
                if kind == _PUBLISH and self._on_publish is not None:
                    (n,) = struct.unpack_from("!H", body)
                    self._on_publish(body[2:2 + n].decode(), body[2 + n:])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connected = False

    async def _read_packet(self) -> tuple[int, bytes]:
        assert self._reader is not None
        first = (await self._reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self._reader.readexactly(1))[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = await self._reader.readexactly(length)
        # we subscribe at QoS 0, so incoming PUBLISHes carry no packet id to skip
        return first >> 4, body

    async def _send(self, data: bytes) -> None:
        if self._writer is None or not self.connected:
            raise MqttLiteError(f"{self._client_id}: not connected")
        self._writer.write(data)
        await self._writer.drain()

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id
