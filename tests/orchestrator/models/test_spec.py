"""ModelSpec validation and round trips; what build_model emits (names, shapes, metadata)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from orchestrator.models import (
    META_GRAPH,
    META_KIND,
    META_PARAMS,
    META_SPEC,
    ModelSpec,
    build_model,
)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "cnn", "n_features": 4}, "kind"),
        ({"kind": "softmax", "n_features": 0, "n_classes": 3}, "n_features"),
        ({"kind": "softmax", "n_features": True, "n_classes": 3}, "n_features"),
        ({"kind": "softmax", "n_features": 4, "n_classes": 1}, "n_classes"),
        ({"kind": "softmax", "n_features": 4, "n_classes": 3, "hidden": (8,)}, "hidden"),
        ({"kind": "logistic", "n_features": 4, "n_classes": 3}, "n_classes"),
        ({"kind": "mlp", "n_features": 4, "n_classes": 3}, "hidden"),
        ({"kind": "mlp", "n_features": 4, "n_classes": 3, "hidden": (8, 0)}, "hidden"),
        ({"kind": "mlp", "n_features": 4, "n_classes": 3, "hidden": (8,), "activation": "gelu"},
         "activation"),
        ({"kind": "autoencoder", "n_features": 4, "n_classes": 2, "hidden": (2,)}, "n_classes"),
        ({"kind": "softmax", "n_features": 4, "n_classes": 3, "seed": -1}, "seed"),
    ],
)
def test_invalid_specs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        ModelSpec(**kwargs)  # type: ignore[arg-type]


def test_logistic_is_binary_and_hidden_lists_become_tuples() -> None:
    assert ModelSpec("logistic", 3).n_classes == 2
    spec = ModelSpec("mlp", 3, 4, [5, 6])  # type: ignore[arg-type]
    assert spec.hidden == (5, 6)
    assert hash(spec) == hash(ModelSpec("mlp", 3, 4, (5, 6)))


def test_dict_round_trip_survives_json() -> None:
    spec = ModelSpec("autoencoder", 12, 0, (8, 3, 8), "tanh", seed=9)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ModelSpec.from_dict({"kind": "softmax", "n_features": 2, "n_classes": 2}) == ModelSpec(
        "softmax", 2, 2
    )


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown field.*layers"):
        ModelSpec.from_dict({"kind": "mlp", "n_features": 2, "layers": [3]})
    with pytest.raises(ValueError, match=r"missing field.*n_features"):
        ModelSpec.from_dict({"kind": "mlp"})
    with pytest.raises(ValueError, match="expected a mapping"):
        ModelSpec.from_dict([("kind", "mlp")])  # type: ignore[arg-type]


def test_built_graphs_follow_the_contract() -> None:
    spec = ModelSpec("mlp", 7, 3, (5, 4), seed=2)
    built = build_model(spec)
    names = ["W0", "b0", "W1", "b1", "W2", "b2"]
    assert list(built.params) == names
    assert [p.shape for p in built.params.values()] == [
        (7, 5), (5,), (5, 4), (4,), (4, 3), (3,)
    ]
    assert all(p.dtype == np.float32 for p in built.params.values())
    assert built.param_count == 7 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3
    expected_io = {
        "train_step": (
            [*names, "X", "y", "lr", "mu", *(f"{n}_global" for n in names)],
            [*(f"{n}_new" for n in names), "loss"],
        ),
        "eval": ([*names, "X", "y"], ["loss", "metric"]),
        "infer": ([*names, "X"], ["probs"]),
    }
    for graph, (inputs, outputs) in expected_io.items():
        proto = onnx.load_from_string(built.graphs[graph])
        assert [i.name for i in proto.graph.input] == inputs
        assert [o.name for o in proto.graph.output] == outputs
        assert not {i.name for i in proto.graph.initializer} & set(names)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta[META_KIND] == "mlp"
        assert meta[META_PARAMS] == ",".join(names)
        assert meta[META_GRAPH] == graph
        assert ModelSpec.from_dict(json.loads(meta[META_SPEC])) == spec


def test_autoencoder_graphs_have_no_labels() -> None:
    built = build_model(ModelSpec("autoencoder", 6, 0, (4, 2, 4)))
    train = onnx.load_from_string(built.graphs["train_step"])
    assert "y" not in {i.name for i in train.graph.input}
    infer = onnx.load_from_string(built.graphs["infer"])
    assert [o.name for o in infer.graph.output] == ["reconstruction", "score"]


def test_initial_params_are_seeded_and_scaled() -> None:
    spec = ModelSpec("mlp", 64, 10, (256,), "relu", seed=4)
    a, b = build_model(spec).params, build_model(spec).params
    other = build_model(ModelSpec("mlp", 64, 10, (256,), "relu", seed=5)).params
    np.testing.assert_array_equal(a["W0"], b["W0"])
    assert not np.array_equal(a["W0"], other["W0"])
    assert not a["b0"].any() and not a["b1"].any()
    # He-uniform before the ReLU (limit sqrt(6/64)), Glorot-uniform on the output layer
    assert np.sqrt(6 / 64) * 0.9 < np.abs(a["W0"]).max() <= np.sqrt(6 / 64)
    assert np.abs(a["W1"]).max() <= np.sqrt(6 / (256 + 10))
