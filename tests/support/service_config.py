"""The test federation's config: a small model on the ``broker`` fixture's Mosquitto.

    config = parse_config(config_dict(tmp_path, broker, aggregation={"k": 1}), base_dir=tmp_path)

The ``make_config`` fixture (tests/conftest.py) does exactly that.
"""

from __future__ import annotations

import json
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


def config_file(path: Path, mqtt: MosquittoBroker, /, **sections: dict[str, Any]) -> Path:
    """:func:`config_dict` (data next to ``path``) written as a TOML file at ``path``, for
    tests that run the service as a process or through a CLI."""
    data = config_dict(path.parent, mqtt, **sections)
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string
