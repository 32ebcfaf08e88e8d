"""export_inference: a stand-alone model with the parameters baked in."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from orchestrator.models import ExportError, ModelSpec, build_model, export_inference

SPECS = [
    ModelSpec("softmax", 6, 4),
    ModelSpec("logistic", 6),
    ModelSpec("mlp", 6, 3, (5,), "tanh"),
    ModelSpec("autoencoder", 6, 0, (4, 2, 4)),
]


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_exported_model_equals_infer_graph(spec: ModelSpec) -> None:
    built = build_model(spec)
    rng = np.random.default_rng(0)
    params = {n: (p + rng.normal(0, 0.2, p.shape)).astype(np.float32)
              for n, p in built.params.items()}
    X = rng.normal(size=(9, spec.n_features)).astype(np.float32)
    exported = export_inference(built.graphs["infer"], params)
    session = ort.InferenceSession(exported)
    assert [i.name for i in session.get_inputs()] == ["X"]
    expected = ort.InferenceSession(built.graphs["infer"]).run(None, {**params, "X": X})
    got = session.run(None, {"X": X})
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        # same maths; constant folding of the baked-in weights may round the last bit
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["fedmq.graph"] == "export" and meta["fedmq.kind"] == spec.kind


def test_export_works_without_metadata() -> None:
    built = build_model(ModelSpec("softmax", 3, 2))
    proto = onnx.load_from_string(built.graphs["infer"])
    del proto.metadata_props[:]
    exported = export_inference(proto.SerializeToString(), built.params)
    assert {i.name for i in onnx.load_from_string(exported).graph.input} == {"X"}


def test_export_rejects_parameters_that_do_not_fit() -> None:
    built = build_model(ModelSpec("mlp", 4, 2, (3,)))
    infer = built.graphs["infer"]
    with pytest.raises(ExportError, match=r"missing.*b1"):
        export_inference(infer, {n: p for n, p in built.params.items() if n != "b1"})
    with pytest.raises(ExportError, match=r"not used.*extra"):
        export_inference(infer, {**built.params, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ExportError, match=r"'W0' has shape \(4, 4\)"):
        export_inference(infer, {**built.params, "W0": np.zeros((4, 4), np.float32)})
    with pytest.raises(ExportError, match="NaN or Inf"):
        export_inference(infer, {**built.params, "b0": np.full(3, np.nan, np.float32)})
    with pytest.raises(ExportError, match="not a valid ONNX model"):
        export_inference(b"\x00garbage", built.params)
