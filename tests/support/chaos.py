"""The chaos harness: a real Mosquitto, ``fedmq orchestrator run`` and ``python -m edge_agent
run`` as subprocesses training softmax regression on ``digits``, and the faults to inject.

Each agent reaches the broker through its own :class:`LinkCutter` (a TCP forwarder), so one
agent can be partitioned while the rest of the fleet trains. :meth:`ChaosSite.check` reads
only durable state — the orchestrator's store, the agents' state files and logs — after every
process has stopped, and returns a :class:`Ledger` of what happened to every update an agent
produced.

The ``chaos_site`` fixture (tests/chaos/conftest.py) makes sites and tears them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.simulate import FleetSpec, provision_fleet, shard_data
from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.store import Store
from tests.support.service_process import start_service, wait_ready

FED = "chaos"
_PRODUCED = re.compile(r"update seq (\d+) \(")
_ADOPTED = re.compile(r"model v(\d+)")
_ACCEPTED = ("buffered", "applied")


class LinkCutter:
    """A TCP forwarder to the broker; :meth:`cut` drops every connection and refuses new ones
    until :meth:`heal` (a partition: the broker is unreachable for this agent only)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._cut = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> LinkCutter:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        self._cut = True
        self._drop()

    def heal(self) -> None:
        self._cut = False

    def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:  # the broker is down (a restart): the agent retries
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@dataclass
class Ledger:
    """What became of every update the agents produced (see :meth:`ChaosSite.check`)."""

    produced: int = 0
    counted_once: int = 0
    in_outbox: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    lost: list[tuple[str, int]] = field(default_factory=list)
    versions: int = 0


_CONFIG = """\
[federation]
id = "{fed}"
data_dir = "orchestrator"
heartbeat_s = 0.5
[broker]
embedded = false
host = "{host}"
port = {port}
password = "{password}"
password_file = "{password_file}"
pid_file = "{pid_file}"
[model]
kind = "softmax"
n_features = {n_features}
n_classes = {n_classes}
[training]
epochs = 1
batch_size = 16
lr = 0.1
codec = "float16"
deadline_s = 20.0
min_battery_pct = 0.0
max_thermal = "critical"
[aggregation]
k = 3
staleness = "polynomial"
max_staleness = 100000
[selection]
concurrency = {concurrency}
retry_after_s = 0.3
"""


class ChaosSite:
    """One federation on disk under ``root``: see the module docstring."""

    def __init__(self, root: Path, broker: MosquittoBroker, devices: int, seed: int) -> None:
        self.root = root
        self.broker = broker
        self.devices = devices
        self.seed = seed
        self.config_path = root / "orchestrator.toml"
        self.orch_log = root / "orchestrator.log"
        self.orch: asyncio.subprocess.Process | None = None
        self.agents: list[asyncio.subprocess.Process | None] = [None] * devices
        self.links: list[LinkCutter] = []
        self.ids: list[str] = []
        self.state_paths: list[Path] = []
        self.kills = {"orchestrator": 0, "agent": 0, "broker": 0}
        self._stack = contextlib.AsyncExitStack()

    # -- set-up ---------------------------------------------------------------------------------

    async def __aenter__(self) -> ChaosSite:
        spec = FleetSpec(devices=self.devices, dataset="digits", split="iid", seed=self.seed,
                         id_prefix="agent")
        data = shard_data(spec)
        b = self.broker
        self.config_path.write_text(_CONFIG.format(
            fed=FED, host=b.host, port=b.port, password=b.orchestrator_password,
            password_file=b.password_file, pid_file=b.pid_file,
            n_features=data.test.X.shape[1], n_classes=data.n_classes,
            concurrency=self.devices))
        config = load_config(self.config_path)
        self.store_path = config.federation.store_path
        self.ids = spec.device_ids()
        bundles = await provision_fleet(config, self.ids)
        await b.reload()
        for i, (bundle, shard) in enumerate(zip(bundles, data.shards, strict=True)):
            link = await self._stack.enter_async_context(LinkCutter(b.host, b.port))
            self.links.append(link)
            folder = self.root / bundle.device_id
            folder.mkdir()
            (folder / "bundle.json").write_text(
                replace(bundle, broker_host="127.0.0.1", broker_port=link.port).to_json())
            np.savez(folder / "data.npz", X=shard.X, y=shard.y)
            self.state_paths.append(self.state_dir(i) / "agent.db")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for i in range(self.devices):
            await self._end_agent(i, signal.SIGKILL)
        await self._end_orchestrator(signal.SIGKILL)
        await self._stack.aclose()

    def state_dir(self, i: int) -> Path:
        return self.root / self.ids[i] / "state"

    # -- the orchestrator -----------------------------------------------------------------------

    async def start_orchestrator(self, *, wait: bool = True) -> None:
        assert self.orch is None or self.orch.returncode is not None
        self.orch = await start_service(self.config_path, self.orch_log)
        if wait:
            await wait_ready(self.orch, self.orch_log)

    async def kill_orchestrator(self) -> None:
        assert self.orch is not None and self.orch.returncode is None, self.tail()
        await self._end_orchestrator(signal.SIGKILL)
        self.kills["orchestrator"] += 1

    async def stop_orchestrator(self) -> None:
        """SIGTERM: the clean path must exit 0."""
        assert self.orch is not None
        code = await self._end_orchestrator(signal.SIGTERM)
        assert code == 0, self.tail()

    async def _end_orchestrator(self, sig: signal.Signals) -> int | None:
        proc, self.orch = self.orch, None
        return await _end(proc, sig)

    @property
    def orchestrator_pid(self) -> int:
        assert self.orch is not None
        return self.orch.pid

    # -- the agents -----------------------------------------------------------------------------

    async def start_agent(self, i: int) -> None:
        assert self.agents[i] is None
        folder = self.root / self.ids[i]
        self.state_dir(i).mkdir(exist_ok=True)
        with (folder / "agent.log").open("ab") as err:
            self.agents[i] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent", "run", "--bundle",
                str(folder / "bundle.json"), "--data", str(folder / "data.npz"),
                "--state", str(self.state_paths[i]), "--probe", "simulated",
                "--heartbeat", "0.3", "--ack-timeout", "1", "--seed", str(i),
                stdout=asyncio.subprocess.DEVNULL, stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def start_fleet(self) -> None:
        for i in range(self.devices):
            await self.start_agent(i)

    async def kill_agent(self, i: int, *, mid_flush_within: float = 3.0) -> bool:
        """SIGKILL agent ``i``, as soon as its outbox holds an update (mid-flush) or after
        ``mid_flush_within`` seconds; True if it was killed with a non-empty outbox."""
        busy = False
        for _ in range(int(mid_flush_within / 0.02)):
            if self.outbox_seqs(i):
                busy = True
                break
            await asyncio.sleep(0.02)
        proc = self.agents[i]
        assert proc is not None and proc.returncode is None, self.agent_log(i)[-3000:]
        await self._end_agent(i, signal.SIGKILL)
        self.kills["agent"] += 1
        return busy

    async def stop_agent(self, i: int) -> int | None:
        return await self._end_agent(i, signal.SIGTERM)

    async def _end_agent(self, i: int, sig: signal.Signals) -> int | None:
        proc, self.agents[i] = self.agents[i], None
        return await _end(proc, sig)

    def agent_alive(self, i: int) -> bool:
        proc = self.agents[i]
        return proc is not None and proc.returncode is None

    def agent_log(self, i: int) -> str:
        path = self.root / self.ids[i] / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self) -> str:
        return self.orch_log.read_text(errors="replace")[-3000:]

    # -- faults ---------------------------------------------------------------------------------

    async def restart_broker(self, down_s: float) -> None:
        await self.broker.stop()
        await asyncio.sleep(down_s)
        await self.broker.start()
        self.kills["broker"] += 1

    # -- reading durable state ------------------------------------------------------------------

    def outbox_seqs(self, i: int) -> list[int]:
        """The seqs in agent ``i``'s outbox (read-only; safe while the agent runs)."""
        return [row[0] for row in _query(self.state_paths[i], "SELECT seq FROM outbox")]

    def produced(self, i: int) -> list[int]:
        """Seqs of the updates agent ``i`` reported committing to its outbox."""
        return [int(m) for m in _PRODUCED.findall(self.agent_log(i))]

    def ledger_rows(self) -> list[tuple[str, int | None, str, str | None]]:
        """``(sender, seq, status, reason)`` of the orchestrator's ledger (read-only)."""
        return [(r[0], r[1], r[2], r[3]) for r in _query(
            self.store_path, "SELECT sender, seq, status, reason FROM updates")]

    def versions(self) -> int:
        rows = _query(self.store_path, "SELECT MAX(version) FROM versions")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def settled(self) -> bool:
        """Every produced update is on record at the orchestrator and no outbox holds one."""
        known = {(s, q) for s, q, _, _ in self.ledger_rows()}
        return all((self.ids[i], q) in known and not self.outbox_seqs(i)
                   for i in range(self.devices) for q in self.produced(i))

    async def wait(self, condition: Callable[[], bool], within: float, what: str) -> None:
        for _ in range(int(within / 0.1)):
            if condition():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what}: not within {within}s\n{self.tail()}")

    async def check(self) -> Ledger:
        """The invariants, from durable state only (every process must have stopped):

        - every produced update is accepted exactly once, still in its agent's outbox, or
          rejected with a reason; no (sender, seq) is accepted twice;
        - each accepted update is in exactly one version's lineage or still buffered;
        - versions are contiguous from 0 with each parent the one before, and every agent
          adopted versions in non-decreasing order;
        - the store's own integrity check and every agent state file's are clean.
        """
        assert self.orch is None and not any(self.agents)
        out = Ledger()
        async with Store.open(self.store_path) as store:
            assert await store.integrity_check() == []
            rows = await store.ledger()
            versions = await store.list_versions()
        accepted = [(r.sender, r.seq) for r in rows if r.status in _ACCEPTED]
        assert len(accepted) == len(set(accepted)), "an update was accepted twice"
        rejected = {(r.sender, r.seq): r.reason for r in rows if r.status == "rejected"}
        assert [v.version for v in versions] == list(range(len(versions)))
        assert all(v.parent == v.version - 1 for v in versions[1:])
        lineage = [u for v in versions[1:] for u in v.lineage["updates"]]
        assert len(lineage) == len(set(lineage)), "an update was applied twice"
        applied = {r.id: r.applied_version for r in rows if r.status == "applied"}
        assert set(lineage) == set(applied)
        for v in versions[1:]:
            assert all(applied[u] == v.version for u in v.lineage["updates"])
        out.versions = len(versions) - 1
        accepted_set = set(accepted)
        for i, device in enumerate(self.ids):
            check = _query(self.state_paths[i], "PRAGMA integrity_check")
            assert check == [("ok",)], (device, check)
            outbox = set(self.outbox_seqs(i))
            for seq in sorted(set(self.produced(i)) | outbox):
                out.produced += 1
                key = (device, seq)
                if key in accepted_set:
                    out.counted_once += 1
                elif seq in outbox:
                    out.in_outbox += 1
                elif rejected.get(key):
                    reason = str(rejected[key])
                    out.rejected[reason] = out.rejected.get(reason, 0) + 1
                else:
                    out.lost.append(key)
            adopted = [int(m) for m in _ADOPTED.findall(self.agent_log(i))]
            assert adopted == sorted(adopted), (device, adopted)
        assert out.lost == [], f"updates lost: {out.lost}"
        return out


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=5)) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created but not yet initialised
            return []
        raise


async def _end(proc: asyncio.subprocess.Process | None, sig: signal.Signals) -> int | None:
    if proc is None:
        return None
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(30):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
    return await proc.wait()
