"""``MosquittoBroker``: a real Mosquitto subprocess owned by an async context manager."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .config import (
    DEFAULT_ACL,
    DEFAULT_LOG_TYPES,
    DEFAULT_MAX_PACKET_SIZE,
    DEV_TEMPLATE,
    pick_free_port,
    render_dev_config,
)
from .errors import BrokerError
from .passwords import PasswordFile, generate_password, validate_username
from .process import find_mosquitto, reload_broker

ORCHESTRATOR_USER = "orchestrator"

_RUNNING_LINE = re.compile(rb"mosquitto version \S+ running")
_RELOAD_LINE = b"Reloading config."
_RESIGNAL_S = 2.0
_POLL_S = 0.02
_DIAGNOSTIC_LINES = 40


def _initial_accounts(
    users: Mapping[str, str] | None, orchestrator_password: str | None
) -> dict[str, str]:
    """The password file's first accounts: ``users`` plus the orchestrator's (the given
    password, else a random one), every name and password checked."""
    credentials = dict(users or {})
    if orchestrator_password is not None:
        if credentials.get(ORCHESTRATOR_USER, orchestrator_password) != orchestrator_password:
            raise BrokerError("two different orchestrator passwords given")
        credentials[ORCHESTRATOR_USER] = orchestrator_password
    credentials.setdefault(ORCHESTRATOR_USER, generate_password())
    for name, password in credentials.items():
        validate_username(name)
        if not password:
            raise BrokerError(f"empty password for user {name!r}")
    return credentials


def _with_information(log_types: Sequence[str]) -> tuple[str, ...]:
    """``log_types`` plus ``information``: the lines that starting and reloading wait for
    are logged at that level."""
    types = tuple(log_types)
    if "all" not in types and "information" not in types:
        types += ("information",)
    return types


class MosquittoBroker:
    """A development Mosquitto on 127.0.0.1, configured from ``broker_config/dev.conf.in``.

    ``async with MosquittoBroker(workdir) as broker:`` renders the config, password file and
    ACL into ``workdir`` (a temporary directory, removed afterwards, when None), starts the
    broker, waits until it accepts connections and stops it on exit. The password file
    always holds an ``orchestrator`` account; entries already in ``workdir/passwd`` are
    kept. ``stop()``/``start()`` restart it on the same port with the same persistence
    directory; ``kill()`` simulates a crash.

    One instance owns one broker process; its methods are serialised by a lock, so they may
    be called from concurrent tasks of one event loop.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        port: int = 0,
        users: Mapping[str, str] | None = None,
        orchestrator_password: str | None = None,
        acl_file: str | os.PathLike[str] | None = None,
        template: str | os.PathLike[str] | None = None,
        listener_extra: str = "",
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        autosave_interval: int = 2,
        log_types: Sequence[str] = DEFAULT_LOG_TYPES,
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        binary: str | None = None,
    ) -> None:
        """
        Args:
            workdir: where config, password file, ACL, log and persistence live; created if
                missing and kept afterwards. None: a temporary directory, removed on exit.
            port: loopback port; 0 picks a free one at the first start and keeps it.
            users: initial ``{username: password}`` accounts besides the orchestrator.
            orchestrator_password: password of the ``orchestrator`` account (random if None).
            acl_file: ACL to copy into ``workdir`` (default ``broker_config/acl``).
            template: config template (default ``broker_config/dev.conf.in``).
            listener_extra: raw config lines appended to the listener block (e.g. TLS
                ``cafile``/``certfile``/``keyfile``).
            autosave_interval: seconds between persistence saves, bounding what ``kill()``
                loses; a clean ``stop()`` always saves.
            log_types: Mosquitto ``log_type`` values; ``information`` is always added.
        """
        if not 0 <= port < 65536:
            raise BrokerError(f"port {port} out of range")
        self._credentials = _initial_accounts(users, orchestrator_password)
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._prepared = False
        self._port = port
        self._acl_source = Path(acl_file) if acl_file is not None else DEFAULT_ACL
        self._template = Path(template) if template is not None else DEV_TEMPLATE
        self._listener_extra = listener_extra
        self._max_packet_size = max_packet_size
        self._autosave_interval = autosave_interval
        self._log_types = _with_information(log_types)
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._binary = binary
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    # --- properties --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise BrokerError("the port is chosen when the broker first starts")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise BrokerError("the working directory is created when the broker starts")
        return self._workdir

    @property
    def config_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.workdir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.workdir / "acl"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "mosquitto.pid"

    @property
    def persistence_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def credentials(self) -> dict[str, str]:
        """A copy of ``{username: password}`` for every account this instance created."""
        return dict(self._credentials)

    @property
    def orchestrator_password(self) -> str:
        return self._credentials[ORCHESTRATOR_USER]

    def log_text(self) -> str:
        """The broker's log so far (for test diagnostics)."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> MosquittoBroker:
        try:
            await self.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def start(self) -> None:
        """Start the broker (again) and wait until its port accepts connections."""
        async with self._lock:
            if self.running:
                raise BrokerError(f"broker already running (pid {self.pid})")
            binary = self._binary or find_mosquitto()
            try:
                await asyncio.to_thread(self._prepare)
            except OSError as exc:
                raise BrokerError(f"cannot write the broker's files: {exc}") from None
            await self._spawn(binary)

    async def stop(self) -> None:
        """SIGTERM (the broker saves its persistence database), SIGKILL if it lingers."""
        async with self._lock:
            await self._terminate(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL, as in a crash: messages since the last autosave are lost."""
        async with self._lock:
            await self._terminate(signal.SIGKILL)

    async def reload(self) -> None:
        """SIGHUP and wait until the broker has re-read its password file and ACL."""
        async with self._lock:
            await self._reload_locked()

    async def add_user(self, name: str, password: str | None = None) -> str:
        """Add ``name`` (or change its password) and reload; returns the password."""
        return (await self.add_users({name: password}))[name]

    async def add_users(self, users: Mapping[str, str | None]) -> dict[str, str]:
        """Add or update several users with one rewrite and one reload (a reload takes
        about 0.1 s: Mosquitto 2.0 looks at signals every 100 ms).

        A None password is generated; returns ``{name: password}``.
        """
        chosen: dict[str, str] = {}
        for name, password in users.items():
            validate_username(name)
            if password is None:
                password = generate_password()
            elif not password:
                raise BrokerError(f"empty password for user {name!r}")
            chosen[name] = password
        async with self._lock:
            if self._prepared:
                await asyncio.to_thread(PasswordFile(self.password_file).set_many, chosen)
            self._credentials.update(chosen)
            await self._reload_locked()
        return chosen

    async def remove_user(self, name: str) -> bool:
        """Remove ``name`` and reload: its connections are dropped, new ones refused."""
        async with self._lock:
            known = self._credentials.pop(name, None) is not None
            if not self._prepared:
                return known
            removed = await asyncio.to_thread(PasswordFile(self.password_file).remove, name)
            await self._reload_locked()
            return removed

    # --- internals ---------------------------------------------------------------------------

    async def _close(self) -> None:
        """Stop, and remove the working directory if it is a temporary one."""
        try:
            await self.stop()
        finally:
            if self._owns_workdir and self._workdir is not None:
                await asyncio.to_thread(shutil.rmtree, self._workdir, True)
                self._workdir = None
                self._owns_workdir = False
                self._prepared = False

    def _prepare(self) -> None:
        """Create the working directory and its files (blocking; run in a thread)."""
        if not self._prepared:
            if self._requested_workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="fedmq-broker-"))
                self._owns_workdir = True
            else:
                self._workdir = self._requested_workdir
                self._workdir.mkdir(parents=True, exist_ok=True)
            self.persistence_dir.mkdir(mode=0o700, exist_ok=True)
            try:
                acl = self._acl_source.read_bytes()
            except OSError as exc:
                raise BrokerError(f"cannot read ACL file {self._acl_source}: {exc}") from None
            fd = os.open(self.acl_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(acl)
            # A kept working directory keeps the accounts its password file already holds
            # (e.g. devices provisioned while no broker ran); ours are added or updated.
            PasswordFile(self.password_file).set_many(self._credentials)
            self._prepared = True
        if self._port == 0:
            self._port = pick_free_port(self.host)
        self.config_file.write_text(
            render_dev_config(
                port=self._port,
                password_file=self.password_file,
                acl_file=self.acl_file,
                persistence_dir=self.persistence_dir,
                log_file=self.log_file,
                pid_file=self.pid_file,
                autosave_interval=self._autosave_interval,
                max_packet_size=self._max_packet_size,
                log_types=self._log_types,
                listener_extra=self._listener_extra,
                template=self._template,
            ),
            encoding="utf-8",
        )

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def _diagnostics(self, offset: int) -> str:
        out = self.workdir / "mosquitto.out"
        text = out.read_bytes() if out.exists() else b""
        lines = (text + self._log_since(offset)).decode(errors="replace").splitlines()
        return "\n".join(lines[-_DIAGNOSTIC_LINES:]) or "(the broker wrote no log)"

    async def _spawn(self, binary: str) -> None:
        offset = self._log_size()
        out_path = self.workdir / "mosquitto.out"
        # Mosquitto reports config errors on stderr before its log file is open.
        out = out_path.open("wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                binary, "-c", str(self.config_file),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run {binary}: {exc}") from None
        finally:
            out.close()
        try:
            await self._wait_ready(offset)
        except BaseException:
            await self._terminate(signal.SIGKILL)
            raise

    async def _wait_ready(self, offset: int) -> None:
        proc = self._proc
        assert proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        while True:
            if proc.returncode is not None:
                raise BrokerError(
                    f"mosquitto exited with code {proc.returncode} while starting on port "
                    f"{self._port}:\n{self._diagnostics(offset)}"
                )
            # The "running" line comes after the listener is open; our own port check
            # guards against answering for another process that holds the port.
            if _RUNNING_LINE.search(self._log_since(offset)) and await self._port_open():
                return
            if loop.time() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept connections on port {self._port} within "
                    f"{self._startup_timeout:g}s:\n{self._diagnostics(offset)}"
                )
            await asyncio.sleep(_POLL_S)

    async def _port_open(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self._port)
        except OSError:
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    async def _reload_locked(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return  # the files are read afresh at the next start
        offset = self._log_size()
        reload_broker(proc.pid)
        # Mosquitto logs this line and then re-reads password file and ACL in the same
        # iteration of its single-threaded loop, so any packet we send after seeing it is
        # judged by the new rules.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        again = loop.time() + _RESIGNAL_S
        while _RELOAD_LINE not in self._log_since(offset):
            if proc.returncode is not None:
                raise BrokerError(f"mosquitto exited during reload:\n{self._diagnostics(offset)}")
            if loop.time() > deadline:
                raise BrokerError("mosquitto did not log a reload after SIGHUP")
            if loop.time() > again:  # a reload is idempotent: ask again rather than wait on
                reload_broker(proc.pid)  # a signal that may have gone unnoticed
                again = loop.time() + _RESIGNAL_S
            await asyncio.sleep(_POLL_S)

    async def _terminate(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(proc.wait(), self._stop_timeout)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        except BaseException:
            # Cancelled while waiting: never leave a broker behind.
            if proc.returncode is None:
                proc.kill()
            raise
        finally:
            if proc.returncode is not None:
                self._proc = None
