"""``fedmq audit verify`` on a real store file: one line and exit 0 for an intact chain, one
line and exit 1 for a broken one or a store it cannot read (never a traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from orchestrator.cli import audit as audit_cli
from orchestrator.store import AuditEvent, Store


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "o.toml"
    path.write_text('[federation]\nid = "fed-v"\ndata_dir = "state"\n'
                    '[model]\nkind = "logistic"\nn_features = 3\n')
    return path


def _db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "orchestrator.db"


async def _populate(tmp_path: Path, n: int = 4) -> None:
    _db(tmp_path).parent.mkdir()
    async with Store.open(_db(tmp_path), federation_id="fed-v") as store:
        for i in range(n):
            await store.append_audit(AuditEvent("operator_command", "cli", detail={"i": i}))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = audit_cli.main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


async def test_an_intact_chain_is_one_ok_line_with_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    await _populate(tmp_path)
    code, out, err = await asyncio.to_thread(_run, capsys, "--config", str(_config(tmp_path)))
    assert (code, err, len(out)) == (0, [], 1)
    assert out[0].startswith("fedmq audit verify: OK: 4 rows chained; head row 4 hash ")
    head = out[0].rsplit(" ", 1)[1]
    code, out, _ = await asyncio.to_thread(_run, capsys, "--config", str(_config(tmp_path)),
                                           "--head", head)
    assert code == 0


async def test_a_broken_chain_names_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    await _populate(tmp_path)
    with contextlib.closing(sqlite3.connect(_db(tmp_path))) as raw, raw:
        raw.execute("UPDATE audit SET detail = '{\"i\":99}' WHERE id = 3")
    code, out, err = await asyncio.to_thread(_run, capsys, "--config", str(_config(tmp_path)))
    assert (code, err, len(out)) == (1, [], 1)
    assert out[0].startswith("fedmq audit verify: BROKEN: row 3: contents do not match")


@pytest.mark.parametrize("make", ["missing", "junk", "directory"])
async def test_an_unreadable_store_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str,
) -> None:
    if make == "junk":
        _db(tmp_path).parent.mkdir()
        _db(tmp_path).write_bytes(b"\x00garbage" * 512)
    elif make == "directory":
        _db(tmp_path).mkdir(parents=True)
    code, out, err = await asyncio.to_thread(_run, capsys, "--config", str(_config(tmp_path)))
    assert (code, out, len(err)) == (1, [], 1)
    assert err[0].startswith("fedmq audit verify: error: ")
    assert not _db(tmp_path).is_file() or make == "junk"  # verify never creates a store


async def test_usage_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await asyncio.to_thread(_run, capsys, "--config", str(_config(tmp_path)),
                                           "--head", "xyz")
    assert (code, len(err)) == (2, 1)
    code, _, err = await asyncio.to_thread(_run, capsys)
    assert (code, len(err)) == (2, 1)
