"""The TOML config: defaults, and one clear line naming the key for every mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import DEFAULT_BROKER_PORT, ConfigError, load_config, parse_config
from tests.support.paths import REPO

BASE: dict[str, Any] = {
    "federation": {"id": "fed"},
    "model": {"kind": "softmax", "n_features": 4, "n_classes": 3},
}

_EXTERNAL_TLS: dict[str, Any] = {"embedded": False, "password": "pw", "tls": True,
                                 "ca_file": "ca.crt"}


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    data = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(_with(), base_dir=tmp_path)
    assert config.federation.data_dir == tmp_path / "data"
    assert config.broker.embedded and config.broker.port == DEFAULT_BROKER_PORT
    assert config.password_file == tmp_path / "data" / "broker" / "passwd"
    assert config.aggregation.k == 10 and config.selection.concurrency == 15
    assert config.model.spec is not None and config.model.spec.n_classes == 3
    assert config.training.codec_spec.codec.value == "topk"
    assert config.training.codec_spec.topk_fraction == 0.05
    assert config.training.optimizer == "sgd" and config.training.weight_decay == 0.0
    assert config.training.adam_betas == (0.9, 0.999) and config.training.momentum == 0.9
    assert not config.stopping.enabled


def test_the_on_device_optimizer(tmp_path: Path) -> None:
    config = parse_config(_with(training={"optimizer": "adam", "adam_betas": [0.8, 0.99],
                                          "weight_decay": 0.01, "momentum": 0}),
                          base_dir=tmp_path)
    t = config.training
    assert (t.optimizer, t.adam_betas, t.weight_decay, t.momentum) == ("adam", (0.8, 0.99),
                                                                       0.01, 0.0)


def test_client_certificate_mode(tmp_path: Path) -> None:
    config = parse_config(_with(broker={**_EXTERNAL_TLS, "client_certificates": True,
                                        "ca_key_file": "ca.key"}), base_dir=tmp_path)
    assert config.broker.ca_key_file == tmp_path / "ca.key"
    assert config.broker.cert_file is None and config.federation.tls_dir == tmp_path / "data/tls"


def test_the_example_file_is_valid() -> None:
    example = REPO / "examples" / "orchestrator.toml"
    config = load_config(example)
    assert config.federation.id == "demo" and config.model.spec is not None


@pytest.mark.parametrize(("sections", "message"), [
    ({"aggregation": {"kk": 3}}, "aggregation.kk: unknown key"),
    ({"aggregation": {"k": 0}}, "aggregation.k: must be > 0, got 0"),
    ({"aggregation": {"k": "3"}}, "aggregation.k: expected an integer, got string '3'"),
    ({"aggregation": {"k": True}}, "aggregation.k: expected an integer, got boolean True"),
    ({"training": {"lr": -0.1}}, "training.lr: must be >= 0, got -0.1"),
    ({"training": {"codec": "zip"}}, "training.codec: must be one of float32, float16, int8"),
    ({"training": {"optimizer": "lion"}},
     "training.optimizer: must be one of sgd, momentum, adam, got 'lion'"),
    ({"training": {"momentum": 1.0}}, "training.momentum: must be in [0, 1), got 1.0"),
    ({"training": {"adam_betas": [0.9]}},
     "training.adam_betas: must be two numbers in [0, 1), got [0.9]"),
    ({"training": {"adam_betas": [0.9, 1.0]}}, "training.adam_betas: must be two numbers in"),
    ({"training": {"adam_betas": [0.9, "x"]}},
     "training.adam_betas: expected a list of finite numbers"),
    ({"training": {"weight_decay": -0.1}}, "training.weight_decay: must be >= 0, got -0.1"),
    ({"aggregation": {"trim_fraction": 0.5}}, "aggregation.trim_fraction: must be in [0, 0.5)"),
    ({"training": {"topk_fraction": 0}}, "training.topk_fraction: must be in (0, 1]"),
    ({"federation": {"id": "a/b"}}, "federation.id: must be 1-64 of letters"),
    ({"federation": {"enrollment": "maybe"}}, "federation.enrollment: must be one of auto"),
    ({"broker": {"port": 70000}}, "broker.port: must be a TCP port"),
    ({"broker": {"embedded": False}}, "broker.password: required when broker.embedded"),
    ({"model": {"n_classes": 1}}, "model.n_classes: a softmax model needs at least 2"),
    ({"model": {"hidden": [8]}}, "model.hidden: a softmax model has no hidden layers"),
    ({"model": {"graphs_dir": "x"}}, "model.kind: give either model.graphs_dir"),
    ({"stopping": {"target_metric": 0.9}}, "stopping.target_metric: needs evaluation.dataset"),
    ({"aggregation": {"quorum": 99}}, "aggregation.quorum: must be <= selection.concurrency"),
    ({"aggregation": {"max_per_version": 5}}, "aggregation.max_per_version: must be >= "),
    ({"surprise": {"x": 1}}, "[surprise]: unknown section"),
    ({"broker": {**_EXTERNAL_TLS, "client_certificates": True}},
     "broker.client_certificates: needs broker.ca_key_file"),
    ({"broker": {"embedded": False, "password": "pw", "tls": True,
                 "client_certificates": True}}, "broker.client_certificates: needs broker.ca_file"),
    ({"broker": {"embedded": False, "password": "pw", "client_certificates": True,
                 "ca_key_file": "ca.key"}}, "broker.client_certificates: needs broker.tls"),
    ({"broker": {"client_certificates": True, "tls": True, "ca_file": "ca.crt",
                 "ca_key_file": "ca.key"}}, "broker.client_certificates: needs broker.tls = "
     "true and an external broker"),
    ({"broker": {**_EXTERNAL_TLS, "ca_key_file": "ca.key"}},
     "broker.ca_key_file: set broker.client_certificates = true"),
    ({"broker": {**_EXTERNAL_TLS, "client_certificates": True, "ca_key_file": "ca.key",
                 "cert_file": "o.crt"}}, "broker.cert_file: give broker.key_file with it"),
])
def test_mistakes_name_the_key(tmp_path: Path, sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(**sections), base_dir=tmp_path)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_missing_federation_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^federation.id: required$"):
        parse_config({"federation": {}, "model": BASE["model"]}, base_dir=tmp_path)


def test_model_needs_a_kind_or_graphs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model.kind: required"):
        parse_config({"federation": {"id": "f"}}, base_dir=tmp_path)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('federation = "x"\n')
    with pytest.raises(ConfigError, match=r"^federation: must be a table"):
        load_config(wrong)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "o.toml"
    path.write_text('[federation]\nid = "f"\ndata_dir = "../state"\n'
                    '[model]\nkind = "logistic"\nn_features = 3\n'
                    '[broker]\nembedded = false\npassword = "pw"\npassword_file = "pw.txt"\n')
    config = load_config(path)
    assert config.federation.data_dir == tmp_path / "state"
    assert config.password_file == tmp_path / "conf" / "pw.txt"
    assert config.broker_pid_file is None


def test_a_name_with_a_line_break_stays_on_one_line(tmp_path: Path) -> None:
    # TOML allows any string as a quoted key or table name ("a\nb" = 1)
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(aggregation={"k\nx": 1}), base_dir=tmp_path)
    assert str(caught.value).startswith("aggregation.'k\\nx': unknown key (known: mode, k,")
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "a\u2028b": {}}, base_dir=tmp_path)
    assert str(caught.value).startswith("['a\\u2028b']: unknown section (known: federation,")
