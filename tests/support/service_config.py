"""The test federation's config: a small model on the ``broker`` fixture's Mosquitto.

    config = parse_config(config_dict(tmp_path, broker, aggregation={"k": 1}), base_dir=tmp_path)

The ``make_config`` fixture (tests/conftest.py) does exactly that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.broker import MosquittoBroker

FED = "testfed"
# a small softmax model: W0 (8, 3), b0 (3,)
MODEL = {"kind": "softmax", "n_features": 8, "n_classes": 3, "seed": 3}


def config_dict(tmp_path: Path, mqtt: MosquittoBroker, /, **sections: dict[str, Any]
                ) -> dict[str, Any]:
    """A config on the ``mqtt`` broker (external, not embedded) with ``sections`` merged."""
    data: dict[str, Any] = {
        "federation": {"id": FED, "data_dir": str(tmp_path / "data")},
        "broker": {"embedded": False, "host": mqtt.host, "port": mqtt.port,
                   "username": "orchestrator", "password": mqtt.orchestrator_password,
                   # no pid_file: tests reload through the fixture, which waits for it
                   "password_file": str(mqtt.password_file)},
        "model": dict(MODEL),
        "aggregation": {"k": 3, "max_staleness": 5},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data
