"""Confidential updates: real agents train on ``load_digits`` against the real orchestrator
(embedded Mosquitto); a subscriber holding the broker's admin credential (the ``orchestrator``
account) on ``fl/+/up/+/updates`` sees only sealed bodies. The signatures verify (they cover
the sealed bytes), but without the orchestrator's private key nothing opens, and no tensor
bytes appear in the clear."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from nacl.public import PrivateKey
from nacl.signing import VerifyKey

from edge_agent.config import AgentConfig
from fedmq.simulate import Fleet, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import pick_free_port
from orchestrator.config import parse_config
from orchestrator.link.keys import load_or_create_key
from orchestrator.service import Orchestrator
from schemas import Update
from schemas.envelope import ENC_SEALED, decode_body, unpack_batch, unseal_key, verify
from schemas.errors import FedmqError
from tests.support.observer import observer

pytestmark = pytest.mark.integration  # an embedded Mosquitto


async def test_an_admin_subscriber_sees_only_sealed_update_bodies(tmp_path: Path) -> None:
    spec = FleetSpec(devices=3, dataset="digits", seed=1, battery_fraction=0.0)
    data = shard_data(spec)
    config = parse_config({
        "federation": {"id": "sealed", "data_dir": str(tmp_path / "orch"), "heartbeat_s": 5.0},
        "broker": {"embedded": True, "port": pick_free_port()},
        "model": {"kind": "softmax", "n_features": 64, "n_classes": 10},
        "training": {"codec": "float32"},  # the rawest codec: tensors would be easy to spot
        "aggregation": {"k": 3},
        "ingest": {"synchronous": "NORMAL"},
    }, base_dir=tmp_path)
    assert config.training.seal  # the default
    bundles = await provision_fleet(config, spec.device_ids())
    payloads: list[bytes] = []
    async with Orchestrator(config) as orch:
        broker = orch.broker
        assert broker is not None
        async with observer(broker) as snoop:
            await snoop.subscribe("fl/+/up/+/updates", qos=1)
            async with Fleet(bundles, data.shards, tmp_path / "agents", spec,
                             agent_config=AgentConfig(heartbeat_s=1.0, holdout=0.0)):
                async with asyncio.timeout(60):
                    async for message in snoop.messages:
                        assert isinstance(message.payload, bytes)
                        payloads.append(message.payload)
                        if len(payloads) >= 3:
                            break
                    await orch.wait_for_version(1)
        keys = {d.device_id: VerifyKey(d.public_key) for d in await orch.store.list_devices()
                if d.public_key is not None}

    orchestrator_key = unseal_key(load_or_create_key(config.federation.key_path))
    stranger = PrivateKey.generate()
    opened_any = 0
    for payload in payloads:
        for entry in unpack_batch(payload).entries:
            opened = verify(entry, keys[_sender(entry, keys)])  # signed over the sealed bytes
            assert opened.header.enc == ENC_SEALED
            with pytest.raises(FedmqError):
                decode_body(opened, Update)  # no key: nothing to read
            with pytest.raises(FedmqError):
                decode_body(opened, Update, unseal=stranger)
            update = decode_body(opened, Update, unseal=orchestrator_key)
            for tensor in update.tensors:
                values = np.frombuffer(tensor.data, np.float32)
                assert np.any(values != 0)
                # no tensor's bytes, nor a recognisable run of them, travel in the clear
                assert tensor.data not in payload
                assert tensor.data[:32] not in payload
            opened_any += 1
    assert opened_any >= 3


def _sender(entry: bytes, keys: dict[str, VerifyKey]) -> str:
    """The device whose key verifies ``entry``."""
    for device, key in keys.items():
        try:
            verify(entry, key)
        except FedmqError:
            continue
        return device
    raise AssertionError("no enrolled device signed this entry")
