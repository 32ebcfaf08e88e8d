"""Shared fixtures: a real Mosquitto per test, MQTT clients for it, and the real orchestrator on it.

    async def test_x(broker: MosquittoBroker, mqtt_client: Callable[..., aiomqtt.Client]):
        await broker.add_user("dev-a", "pw")
        async with mqtt_client(broker, "dev-a", "pw") as client:
            ...

    async def test_y(orchestrator: Orchestrator, devices: Callable[..., Any]):
        device = await devices(orchestrator, "dev-1")      # a SimDevice, enrolled
        ...

Subfolders add their own fixtures in their own conftest.py files (tests/edge_agent overrides
``orchestrator`` with its fake one); helpers are imported from ``tests.support``.

Every test that starts a real Mosquitto carries the ``integration`` marker: tests using the
``broker`` fixture get it here, the others (embedded brokers, subprocesses) say so themselves.
:mod:`tests.support.broker_guard` fails a test that starts one without it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config, parse_config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from tests.support import broker_guard, fp_env
from tests.support.service_config import config_dict
from tests.support.sim_device import SimDevice

# -- test isolation ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _default_floating_point_environment() -> Generator[None, None, None]:
    """Each test ends with the default floating-point environment (see tests.support.fp_env)."""
    yield
    fp_env.reset()


# -- the integration marker ------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects on it
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    broker_guard.install(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    with broker_guard.watching(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown":
        broker_guard.check(item, report)
    return report


# -- a broker and clients ------------------------------------------------------------------------


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A running Mosquitto on a free 127.0.0.1 port, configured from broker_config/.

    Its files live in ``tmp_path / "broker"``; the ``orchestrator`` account exists
    (``broker.orchestrator_password``); add devices and operators with
    ``await broker.add_user(name, password)``.
    """
    async with MosquittoBroker(tmp_path / "broker") as running:
        yield running


def _make_client(
    broker: MosquittoBroker, username: str, password: str | None = None, **kwargs: Any
) -> aiomqtt.Client:
    if password is None:
        try:
            password = broker.credentials[username]
        except KeyError:
            raise KeyError(f"broker has no account {username!r}; pass its password") from None
    kwargs.setdefault("identifier", f"{username}-{uuid.uuid4().hex[:10]}")
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    return aiomqtt.Client(
        broker.host, broker.port, username=username, password=password, **kwargs
    )


@pytest.fixture
def mqtt_client() -> Callable[..., aiomqtt.Client]:
    """Factory ``mqtt_client(broker, username, password=None, **kwargs) -> aiomqtt.Client``.

    MQTT 5 and a unique ``identifier`` unless given in ``kwargs``; ``password`` defaults to
    the one the broker holds for ``username``. The client is not connected: use it as an
    async context manager.
    """
    return _make_client


# -- the orchestrator on that broker --------------------------------------------------------------


@pytest.fixture
def make_config(tmp_path: Path, broker: MosquittoBroker) -> Callable[..., Config]:
    """``make_config(**sections) -> Config``: :func:`~tests.support.service_config.config_dict`
    on the ``broker`` fixture, parsed."""
    def make(**sections: dict[str, Any]) -> Config:
        return parse_config(config_dict(tmp_path, broker, **sections), base_dir=tmp_path)
    return make


@pytest.fixture
async def orchestrator(make_config: Callable[..., Config]) -> AsyncIterator[Orchestrator]:
    """A running orchestrator on the ``broker`` fixture with the default test config."""
    async with Orchestrator(make_config(), store_synchronous="NORMAL") as orch:
        yield orch


@pytest.fixture
async def devices(broker: MosquittoBroker
                  ) -> AsyncIterator[Callable[..., Awaitable[SimDevice]]]:
    """``await devices(orch, "dev-1", enroll=True) -> SimDevice``: provisions the device as
    ``fedmq device add`` does, waits for the broker reload, connects it and, with ``enroll``,
    enrolls it. Every device is disconnected at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def add(orch: Orchestrator, device_id: str, *, enroll: bool = True,
                      role: str = "device") -> SimDevice:
            bundle = await provision(orch.store, orch.config, device_id,
                                     orchestrator_key=orch.public_key.hex(),
                                     role=role)  # type: ignore[arg-type]
            await broker.reload()
            device = await stack.enter_async_context(SimDevice(bundle, broker))
            if enroll:
                answer = await device.enroll()
                assert answer.status.value in ("active", "awaiting_approval"), answer
            return device

        yield add
