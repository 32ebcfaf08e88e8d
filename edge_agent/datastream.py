"""A directory of ``.npz`` / ``.csv`` files that sensors keep adding to, as a training set.

``DirectorySource`` polls the directory every ``poll_s`` on the injected clock (no inotify:
nothing beyond the agent's dependencies) and feeds the files, oldest mtime first (then by
name), into a ``SampleWindow`` of the newest ``window`` samples. The worker reads
``train``/``holdout`` afresh for every task.

- **Stability**: only names ending in ``.npz`` / ``.csv`` are looked at (so a writer may use
  ``name.csv.part`` and rename), and a file is read only once two consecutive polls saw the
  same size and mtime — a file still being written waits.
- **Bounded memory**: the window plus one file; a file larger than ``max_file_bytes`` (for a
  compressed ``.npz``: its arrays uncompressed) is refused before it is read.
- **Refusals**: a malformed file, a file too large, or one whose feature count differs from
  the window's is one warning line and a count in ``AgentStats.data_refused`` (by reason); the
  agent goes on. A refused file is not retried unless it changes.
- **Restart**: consumed files (name, size, mtime → their running sample indices) are kept in
  the agent's state file, bounded (``window.Ledger``). On start the window is rebuilt from the
  newest consumed files still present, with their original indices (so the holdout split is
  the same); nothing is ingested twice.
"""

from __future__ import annotations

import enum
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .clock import Clock
from .data import LocalData, load_local_data
from .errors import DataError
from .shared import AgentStats, Offload, Pulse
from .window import FileKey, Ledger, LedgerEntry, SampleWindow

__all__ = ["LEDGER_KEY", "DataDirectory", "DirectorySource", "Refusal", "ValueStore",
           "check_file"]

LEDGER_KEY = "data_ledger"
_SUFFIXES = (".npz", ".csv")


class Refusal(enum.StrEnum):
    """Why a data file was not taken into the window."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    FEATURE_MISMATCH = "feature_mismatch"


@dataclass(frozen=True, slots=True)
class DataDirectory:
    """Where the data arrives and how its files are parsed (as for ``load_local_data``)."""

    path: Path
    label_column: str | int | None = None
    supervised: bool = True


class Monitor(Protocol):
    """Told of each batch of samples as it arrives (``scoring.AnomalyMonitor``)."""

    async def observe(self, data: LocalData) -> int | None: ...


class ValueStore(Protocol):
    """Where the ledger is kept (the agent's ``LocalState``)."""

    async def get(self, key: str, default: Any = None) -> Any: ...

    async def put(self, key: str, value: Any) -> None: ...


def check_file(data: LocalData, n_features: int | None) -> Refusal | None:
    """Accept a parsed file into a window of ``n_features`` (None: an empty window)?"""
    if n_features is not None and data.n_features != n_features:
        return Refusal.FEATURE_MISMATCH
    return None


class DirectorySource:
    """The sliding window over a directory (see the module docstring); ``load`` once the
    store is open, then ``run`` as a loop (or ``poll`` by hand)."""

    def __init__(self, spec: DataDirectory, *, store: ValueStore, window: int, poll_s: float,
                 max_file_bytes: int, holdout: float, salt: int, clock: Clock,
                 stats: AgentStats, changed: Pulse, offload: Offload, logger: logging.Logger,
                 max_ledger: int = 1024, monitor: Monitor | None = None) -> None:
        self._spec = spec
        self._monitor = monitor
        self._store = store
        self._poll_s = poll_s
        self._max_bytes = max_file_bytes
        self._clock = clock
        self._stats = stats
        self._changed = changed
        self._offload = offload
        self._log = logger
        self._max_ledger = max_ledger
        self.window = SampleWindow(window, holdout=holdout, salt=salt)
        self.ledger = Ledger(max_ledger)
        self._pending: dict[str, FileKey] = {}
        """What the last poll saw of each not yet consumed file."""
        self._unsaved = False

    @property
    def train(self) -> LocalData:
        return self.window.split()[0]

    @property
    def holdout(self) -> LocalData:
        return self.window.split()[1]

    async def load(self) -> None:
        """Read the ledger, rebuild the window from the newest consumed files still present,
        and take a first look at the directory (read next poll, once stable)."""
        record = await self._store.get(LEDGER_KEY)
        same_dir = isinstance(record, dict) and record.get("dir") == str(self._spec.path)
        self.ledger = Ledger.from_record(record if same_dir else None, self._max_ledger)
        if isinstance(record, dict) and not same_dir:  # another directory: new files, new
            self.ledger.next_index = int(record.get("next", 0))  # indices all the same
        self.window.n_features = self.ledger.n_features
        restored = 0
        for entry in self.ledger.newest_covering(self.window.capacity):
            restored += await self._restore(entry)
        if restored:
            self._log.info("data: %d samples restored from %s", restored, self._spec.path)
        await self.poll()

    async def _restore(self, entry: LedgerEntry) -> int:
        path = self._spec.path / entry.key.name
        try:
            key = await self._offload.run(_key_of, path)
        except OSError:
            return 0
        if key != entry.key:
            return 0  # gone or changed since: its samples are not in the window any more
        try:
            data = await self._offload.run(self._read, path)
        except DataError:
            return 0
        if len(data) != entry.count or check_file(data, self.window.n_features) is not None:
            return 0
        self.window.add(entry.first, data)
        return len(data)

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._poll_s)
            await self.poll()

    async def poll(self) -> int:
        """One look at the directory: consume every file stable since the last look, oldest
        first. Returns how many files were consumed (accepted or refused)."""
        try:
            keys = await self._offload.run(_scan, self._spec.path)
        except OSError as exc:
            self._log.warning("data: cannot list %s (%s)", self._spec.path, exc.strerror)
            return 0
        fresh = [k for k in keys if not self.ledger.seen(k)]
        stable = [k for k in fresh if self._pending.get(k.name) == k]
        self._pending = {k.name: k for k in fresh}
        for key in stable:  # sorted by (mtime, name) by _scan
            await self._consume(key)
            del self._pending[key.name]
            self._unsaved = True
        if stable:
            self._changed.fire()
        if self._unsaved:  # also a write that failed last time (a full disk)
            await self._store.put(LEDGER_KEY, self._ledger_record())
            self._unsaved = False
        return len(stable)

    async def _consume(self, key: FileKey) -> None:
        path = self._spec.path / key.name
        data: LocalData | None = None
        size = await self._offload.run(_loaded_bytes, path, key.size)
        if size > self._max_bytes:
            self._refuse(key, Refusal.TOO_LARGE,
                         f"{path}: {size} bytes, over the {self._max_bytes}-byte limit")
        else:
            try:
                data = await self._offload.run(self._read, path)
            except DataError as exc:
                self._refuse(key, Refusal.MALFORMED, str(exc))
        if data is not None and (why := check_file(data, self.window.n_features)) is not None:
            self._refuse(key, why, f"{path}: {data.n_features} features, the window has "
                                   f"{self.window.n_features}")
            data = None
        if data is None:
            return
        entry = self.ledger.record(key, len(data))
        self.ledger.n_features = data.n_features
        evicted = self.window.add(entry.first, data)
        self._stats.data_files += 1
        self._stats.data_samples += len(data)
        self._log.info("data: %s: %d samples in (window %d, %d evicted)", key.name, len(data),
                       len(self.window), evicted)
        if self._monitor is not None:
            await self._monitor.observe(data)

    def _refuse(self, key: FileKey, why: Refusal, line: str) -> None:
        self.ledger.record(key, 0)
        self._stats.data_refused[why.value] += 1
        self._log.warning("data file refused (%s): %s", why.value, line)

    def _read(self, path: Path) -> LocalData:
        return load_local_data(path, label_column=self._spec.label_column,
                               supervised=self._spec.supervised)

    def _ledger_record(self) -> dict[str, Any]:
        return {**self.ledger.to_record(), "dir": str(self._spec.path)}


def _loaded_bytes(path: Path, size: int) -> int:
    """What reading ``path`` takes: its size, or for a (compressed) ``.npz`` the sum of its
    arrays' uncompressed sizes, from the zip directory alone."""
    if path.suffix.lower() != ".npz":
        return size
    try:
        with zipfile.ZipFile(path) as archive:
            return max(size, sum(info.file_size for info in archive.infolist()))
    except (OSError, zipfile.BadZipFile):
        return size  # not a zip: load_local_data says what is wrong with it


def _key_of(path: Path) -> FileKey:
    st = path.stat()
    return FileKey(st.st_mtime_ns, path.name, st.st_size)


def _scan(directory: Path) -> list[FileKey]:
    """The regular ``.npz``/``.csv`` files in ``directory``, oldest mtime first, then name."""
    keys: list[FileKey] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.lower().endswith(_SUFFIXES):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            keys.append(FileKey(st.st_mtime_ns, entry.name, st.st_size))
    keys.sort()
    return keys

