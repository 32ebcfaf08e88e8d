"""``fedmq agent run`` / ``python -m edge_agent``: user mistakes are one line, exit 2."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import _parser, _prepare, main
from edge_agent.datastream import DataDirectory
from edge_agent.state import LocalState
from fedmq.cli import main as fedmq_main
from schemas import Bundle
from tests.support.paths import REPO


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    bundle = Bundle(device_id="dev-1", fed="fed", broker_host="127.0.0.1", broker_port=1,
                    mqtt_username="dev-1", mqtt_password="pw",
                    orchestrator_key=secrets.token_hex(32), enroll_secret=secrets.token_hex(32))
    path = tmp_path / "bundle.json"
    path.write_text(bundle.to_json())
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 2)
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmq agent: ") and "\n" not in err, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_bundle(tmp_path: Path, data_file: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--bundle", str(tmp_path / "nope.json"), "--data", str(data_file)])
    assert rc == 2
    _one_line_error(capsys, "cannot read bundle", "nope.json", "No such file")


@pytest.mark.parametrize(("text", "fragment"), [
    ("{not json", "not JSON"),
    ("[]", "JSON object"),
    (json.dumps({"format": 9}), "unsupported bundle format"),
    (json.dumps({"format": 1, "device_id": "d"}), "bundle fields"),
])
def test_malformed_bundle(tmp_path: Path, data_file: Path, text: str, fragment: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["run", "--bundle", str(path), "--data", str(data_file)]) == 2
    _one_line_error(capsys, "bad bundle", fragment)


def test_bad_key_in_bundle(bundle_file: Path, data_file: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(bundle_file.read_text())
    data["orchestrator_key"] = "abcd"
    bundle_file.write_text(json.dumps(data))
    assert main(["run", "--bundle", str(bundle_file), "--data", str(data_file)]) == 2
    _one_line_error(capsys, "orchestrator_key")


def test_missing_or_bad_data(bundle_file: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--bundle", str(bundle_file), "--data", str(tmp_path / "x.npz")]) == 2
    _one_line_error(capsys, "no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,oops\n")
    assert main(["run", "--bundle", str(bundle_file), "--data", str(bad)]) == 2
    _one_line_error(capsys, "line 3")


@pytest.mark.parametrize(("n_features", "n_classes", "argv", "fragment"), [
    (6, 2, [], "4 features per sample, but the federation's model takes 6"),
    (4, 2, ["--unlabeled"], "needs labels (0..1), and --unlabeled reads none"),
    (4, 0, [], None),  # an unlabeled model ignores the labels
])
def test_data_that_does_not_fit_the_model_is_one_line_before_connecting(
        tmp_path: Path, data_file: Path, capsys: pytest.CaptureFixture[str],
        n_features: int, n_classes: int, argv: list[str], fragment: str | None) -> None:
    bundle = Bundle(device_id="dev-1", fed="fed", broker_host="127.0.0.1", broker_port=1,
                    mqtt_username="dev-1", mqtt_password="pw",
                    orchestrator_key=secrets.token_hex(32), enroll_secret=secrets.token_hex(32),
                    n_features=n_features, n_classes=n_classes)
    path = tmp_path / "bundle.json"
    path.write_text(bundle.to_json())
    args = _parser().parse_args(["run", "--bundle", str(path), "--data", str(data_file), *argv])
    if fragment is None:
        _prepare(args)
        return
    assert main(["run", "--bundle", str(path), "--data", str(data_file), *argv]) == 2
    _one_line_error(capsys, fragment)


def test_labels_outside_the_models_classes_are_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "five.npz"
    np.savez(data, X=np.zeros((6, 4), np.float32), y=np.array([0, 1, 4, 2, 1, 0]))
    bundle = Bundle(device_id="dev-1", fed="fed", broker_host="127.0.0.1", broker_port=1,
                    mqtt_username="dev-1", mqtt_password="pw",
                    orchestrator_key=secrets.token_hex(32), enroll_secret=secrets.token_hex(32),
                    n_features=4, n_classes=3)
    path = tmp_path / "bundle.json"
    path.write_text(bundle.to_json())
    assert main(["run", "--bundle", str(path), "--data", str(data)]) == 2
    _one_line_error(capsys, "1 label(s) outside 0..2, the federation's classes (e.g. 4)")


def test_state_of_another_device(bundle_file: Path, data_file: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    async def make() -> None:
        async with LocalState(tmp_path / "s.db", device_id="other", fed="fed"):
            pass

    asyncio.run(make())
    rc = main(["run", "--bundle", str(bundle_file), "--data", str(data_file), "--state",
               str(tmp_path / "s.db")])
    assert rc == 2
    _one_line_error(capsys, "belongs to device 'other'")


def test_bad_option_values(bundle_file: Path, data_file: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--bundle", str(bundle_file), "--data", str(data_file), "--holdout", "1.5"])
    assert rc == 2
    _one_line_error(capsys, "holdout")
    assert main(["run", "--bundle", str(bundle_file)]) == 2  # argparse: --data is required
    assert "--data" in capsys.readouterr().err


def test_a_data_directory_and_its_window(bundle_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    run = ["run", "--bundle", str(bundle_file), "--data", str(incoming)]
    args = _parser().parse_args([*run, "--window", "300", "--data-poll", "0.5", "--unlabeled"])
    _, data, config, _, _ = _prepare(args)
    assert data == DataDirectory(incoming.resolve(), None, supervised=False)
    assert (config.window, config.data_poll_s) == (300, 0.5)
    assert main([*run, "--window", "0"]) == 2
    _one_line_error(capsys, "window must be positive")


def test_dispatch_through_fedmq_and_python_dash_m(tmp_path: Path, data_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.json")
    assert fedmq_main(["agent", "run", "--bundle", missing, "--data", str(data_file)]) == 2
    _one_line_error(capsys, "cannot read bundle")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--bundle", missing, "--data",
         str(data_file)], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fedmq agent: cannot read bundle")
    assert "Traceback" not in proc.stderr
