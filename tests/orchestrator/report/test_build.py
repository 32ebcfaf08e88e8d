"""``fedmq report``: figures read from a real store file, real PNGs, the summary, the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedmq.cli import main as fedmq_main
from orchestrator.cli.report import main as report_main
from orchestrator.report import PLOTS, SUMMARY_FILE, ReportError, write_report
from orchestrator.store import IncomingUpdate, Store

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
MIN = 60_000
PNGS = [p.filename for p in PLOTS]


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _params(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), value, np.float32)}


def _acc(sender: str, seq: int, base: int, at: int, cls: str, loss: float) -> IncomingUpdate:
    return IncomingUpdate.accepted(sender, seq, base, 10, _params(0.1), received_ms=at,
                                   meta={"device_class": cls, "train_loss": loss})


async def _populate(path: Path) -> None:
    """Four versions, three ingest bursts (minutes 0, 2 and 5), three device classes' worth of
    provenance, every outcome, and a recorded stop."""
    clock = FakeClock(T0)
    async with Store.open(path, clock=clock) as store:
        for dev, cls in (("s1", "sensor"), ("s2", "sensor"), ("g1", "gateway"),
                         ("old", "sensor")):
            await store.add_device(dev, secret=b"x", status="active", device_class=cls)
        await store.add_device("op", secret=b"x", role="operator", status="active")
        await store.set_status("old", "revoked")
        arch = await store.put_architecture(b"arch")
        await store.commit_version(params=_params(0.0), kind="initial", parent=None,
                                   arch_hash=arch)
        await store.set_version_metrics(0, {"server_loss": 1.4, "server_metric": 0.31,
                                            "server_samples": 100.0})

        # minute 0: three accepted (g1's class only in the registry), two rejected
        ids = await store.ingest([
            _acc("s1", 1, 0, T0, "sensor", 1.0), _acc("s2", 1, 0, T0 + 1_000, "sensor", 0.8),
            _acc("g1", 1, 0, T0 + 2_000, "", 0.9),
            IncomingUpdate.rejected("bad_signature", received_ms=T0 + 3_000),
            IncomingUpdate.rejected("replay", sender="s1", seq=1, received_ms=T0 + 4_000),
        ])
        clock.now = T0 + MIN
        await store.commit_version(
            params=_params(0.1), kind="aggregate", parent=0, applied=dict.fromkeys(ids[:3], 10.0),
            lineage={"staleness": {str(i): 0 for i in ids[:3]}}, metrics={"updates": 3})
        await store.set_version_metrics(1, {
            "server_loss": 0.9, "server_metric": 0.55,
            "federated/s1": {"samples": 30, "loss": 1.0, "metric": 0.5,
                             "metric_name": "accuracy"},
            "federated/g1": {"samples": 10, "loss": 2.0, "metric": 0.9,
                             "metric_name": "accuracy"}})

        # minute 2: s1 trained on v0 (staleness 1); one rejected as stale, one quarantined
        ids = await store.ingest([
            _acc("s1", 2, 0, T0 + 2 * MIN, "sensor", 0.7),
            _acc("s2", 2, 1, T0 + 2 * MIN + 1, "sensor", 0.6),
            _acc("g1", 2, 1, T0 + 2 * MIN + 2, "", 0.5),
            IncomingUpdate.rejected("stale", sender="s2", seq=9, base_version=0,
                                    received_ms=T0 + 2 * MIN + 3),
            IncomingUpdate.quarantined("s2", 3, "norm_outlier", received_ms=T0 + 2 * MIN + 4),
        ])
        clock.now = T0 + 3 * MIN
        # no staleness in this lineage: the report computes it from base and parent versions
        await store.commit_version(params=_params(0.2), kind="aggregate", parent=1,
                                   applied=dict.fromkeys(ids[:3], 10.0))
        await store.set_version_metrics(2, {"server_loss": 0.5, "server_metric": 0.62})

        # minute 5: one applied with staleness 2, one left waiting in the buffer
        ids = await store.ingest([_acc("s1", 3, 0, T0 + 5 * MIN, "sensor", 0.4),
                                  _acc("g1", 3, 2, T0 + 5 * MIN + 1, "", 0.3)])
        clock.now = T0 + 6 * MIN
        await store.commit_version(
            params=_params(0.3), kind="aggregate", parent=2, applied={ids[0]: 10.0},
            lineage={"staleness": {str(ids[0]): 2}})
        await store.set_version_metrics(3, {"server_loss": 0.55, "server_metric": 0.45})
        await store.put_server_state({"stopped": json.dumps({
            "reason": "patience: no improvement", "version": 3,
            "ts_ms": T0 + 6 * MIN}).encode()})


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "orchestrator.db"
    asyncio.run(_populate(path))
    return path


def _image(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        text = dict(img.text)  # type: ignore[attr-defined]
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    return pixels, text


def _check_images(out: Path) -> dict[str, dict[str, str]]:
    meta = {}
    for name in PNGS:
        pixels, text = _image(out / name)
        assert pixels.shape == (450, 750)
        assert pixels.var() > 0, f"{name} is blank"
        meta[name] = text
    return meta


async def test_report_from_a_real_store(populated: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = await write_report(populated, out, federation="fedA", clock=lambda: T0 + 7 * MIN)
    assert [p.name for p in result.files] == [*PNGS, SUMMARY_FILE]

    data = result.data
    assert [v.version for v in data.versions] == [0, 1, 2, 3]
    assert [v.metric for v in data.versions] == [0.31, 0.55, 0.62, 0.45]
    assert [v.updates for v in data.versions] == [0, 3, 3, 1]
    v1 = data.versions[1]
    # sample-weighted: (30·0.5 + 10·0.9) / 40
    assert v1.federated_metric == pytest.approx(0.6) and v1.federated_reports == 2
    assert v1.federated_loss == pytest.approx(1.25)
    assert v1.train_loss == pytest.approx(0.9)
    assert data.metric_name == "accuracy" and data.higher_is_better
    assert sorted(data.staleness) == [0, 0, 0, 0, 0, 1, 2]
    assert data.participation == {"sensor": 5, "gateway": 2}
    assert data.contributors == {"sensor": 2, "gateway": 1}
    assert data.outcomes == {"applied": 7, "buffered": 1, "quarantined": 1, "rejected": 3}
    assert data.rejected_by_reason == {"bad_signature": 1, "replay": 1, "stale": 1}
    assert data.quarantined_by_reason == {"norm_outlier": 1}
    pm = data.per_minute
    assert pm is not None and pm.start_ms == T0
    assert pm.accepted == (3, 0, 3, 0, 0, 2)
    assert pm.rejected == (2, 0, 1, 0, 0, 0)
    assert pm.quarantined == (0, 0, 1, 0, 0, 0)
    assert data.devices_by_status == {"active": 3, "revoked": 1}
    assert data.operators == 1
    assert data.stop is not None and (data.stop.reason, data.stop.version) == (
        "patience: no improvement", 3)

    meta = _check_images(out)
    assert meta["accuracy.png"]["Title"] == "Validation accuracy per model version"
    assert meta["accuracy.png"]["Description"] == (
        "4 server points, 1 federated points, best metric v2")
    assert meta["loss.png"]["Description"].startswith("4 server validation loss points, "
                                                      "1 federated evaluation loss points")
    assert meta["staleness.png"]["Description"] == "7 applied updates, staleness 0..2"
    assert meta["participation.png"]["Description"] == "sensor: 5, gateway: 2"
    assert meta["updates_per_minute.png"]["Description"] == (
        "6 minutes, 8 accepted, 3 rejected, 1 quarantined")

    summary = (out / SUMMARY_FILE).read_text()
    assert summary.startswith("# Federation report: `fedA`\n")
    for expected in (
        "Versions: 4 (v0–v3): 3 aggregated, 0 rollbacks",
        "Validation accuracy: final 0.45 (v3), best 0.62 (v2).",
        "Validation loss: final 0.55 (v3), best 0.5 (v2).",
        "Federated accuracy: final 0.6 (v1 from 2 device reports), best 0.6 (v1).",
        "Stopped at v3 (2023-11-14 22:19:20 UTC): patience: no improvement.",
        "| received | 12 |", "| accepted | 8 |", "| accepted, applied to a version | 7 |",
        "| accepted, waiting in the buffer | 1 |", "| rejected | 3 |", "| quarantined | 1 |",
        "| bad_signature | 1 |", "| stale | 1 |", "| norm_outlier | 1 |",
        "Staleness of applied updates: mean 0.43, max 2 versions.",
        "- 4 devices (3 active, 1 revoked).", "- 1 operator key.",
        "| gateway | 1 | 1 | 2 |", "| sensor | 3 | 2 | 5 |",
    ):
        assert expected in summary, expected
    for name in PNGS:
        assert f"]({name})" in summary


async def test_an_empty_store_gives_no_data_plots(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    async with Store.open(db):
        pass
    result = await write_report(db, tmp_path / "out")
    meta = _check_images(tmp_path / "out")  # "no data" plots are still real, non-blank images
    for name in PNGS:
        assert meta[name]["Description"].startswith("no data"), name
    assert meta["accuracy.png"]["Title"] == "Validation metric per model version"
    assert result.data.versions == () and result.data.per_minute is None
    summary = result.summary.read_text()
    assert summary.startswith("# Federation report\n")
    for expected in ("No model version yet.", "Not stopped", "No updates received.",
                     "No devices registered."):
        assert expected in summary


async def test_a_bare_stop_reason_and_a_lower_is_better_metric(tmp_path: Path) -> None:
    db = tmp_path / "ae.db"
    async with Store.open(db, clock=FakeClock(T0)) as store:
        arch = await store.put_architecture(b"a")
        await store.commit_version(params=_params(0.0), kind="initial", parent=None,
                                   arch_hash=arch, metrics={"metric": 0.9, "metric_name": "mse"})
        await store.commit_version(params=_params(0.0), kind="aggregate", parent=0,
                                   metrics={"metric": 0.2})
        await store.commit_version(params=_params(0.0), kind="rollback", parent=0,
                                   metrics={"metric": 0.9})
        await store.put_server_state({"stop_reason": b"max_versions: reached version 2",
                                      "stopped": b"\xff not json"})
    result = await write_report(db, tmp_path / "out")
    data = result.data
    assert data.metric_name == "mse" and not data.higher_is_better
    summary = result.summary.read_text()
    assert "Validation mse: final 0.9 (v2), best 0.2 (v1)." in summary
    assert "Versions: 3 (v0–v2): 1 aggregated, 1 rollbacks" in summary
    assert "Stopped: max_versions: reached version 2." in summary


async def test_missing_store_and_unwritable_folder(tmp_path: Path, populated: Path) -> None:
    with pytest.raises(ReportError, match="no store at"):
        await write_report(tmp_path / "nope.db", tmp_path / "out")
    assert not (tmp_path / "nope.db").exists()  # never created by a report
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReportError, match="cannot create"):
        await write_report(populated, blocker / "sub")


# -- the command ----------------------------------------------------------------------------------


def test_cli_with_db_prints_the_files(populated: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert fedmq_main(["report", "-o", str(out), "--db", str(populated)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / name) for name in [*PNGS, SUMMARY_FILE]]
    _check_images(out)


def test_cli_with_config(populated: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "orchestrator.db").write_bytes(populated.read_bytes())
    config = tmp_path / "orch.toml"
    config.write_text('[federation]\nid = "plant-7"\ndata_dir = "data"\n'
                      '[model]\nkind = "softmax"\nn_features = 4\nn_classes = 2\n'
                      '[stopping]\nhigher_is_better = false\n')
    out = tmp_path / "r"
    assert report_main(["-o", str(out), "--config", str(config)]) == 0
    summary = (out / SUMMARY_FILE).read_text()
    assert summary.startswith("# Federation report: `plant-7`")
    # the config says lower is better, so the best "accuracy" is the lowest
    assert "Validation accuracy: final 0.45 (v3), best 0.31 (v0)." in summary


@pytest.mark.parametrize(("argv", "code", "message"), [
    ([], 2, "the following arguments are required: -o/--output"),
    (["-o", "x"], 2, "one of the arguments --config --db is required"),
    (["-o", "x", "--db", "a", "--config", "b"], 2, "not allowed with argument"),
    (["-o", "x", "--config", "/nonexistent/orch.toml"], 2, "no such config file"),
    (["-o", "x", "--db", "/nonexistent/orch.db"], 1, "no store at /nonexistent/orch.db"),
])
def test_cli_errors_are_one_line(argv: list[str], code: int, message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("fedmq report: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_unwritable_output_and_not_a_store(populated: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert report_main(["-o", str(blocker / "out"), "--db", str(populated)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedmq report: error: cannot create") and err.count("\n") == 1
    # neither a tiny file (SQLite would call it empty) nor a non-database becomes a store
    noise = tmp_path / "noise"
    noise.write_bytes(b"not a database " * 100)
    for path in (blocker, noise):
        before = path.read_bytes()
        assert report_main(["-o", str(tmp_path / "out"), "--db", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"fedmq report: error: {path} is not a fedmq store")
        assert err.count("\n") == 1
        assert path.read_bytes() == before
