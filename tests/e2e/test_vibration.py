"""``fedmq demo --task vibration`` end to end: embedded Mosquitto, the real ``Orchestrator`` and
20 real edge agents training the 1-D CNN imported from ``examples/models/conv1d_vibration.onnx``
on synthetic vibration, one machine per device. The server evaluates on 4 machines no agent
has seen and must reach the task's 0.95 target before the wall-clock guard."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import onnxruntime as ort
import pytest

from fedmq.demo import prepare_demo, run_demo

pytestmark = pytest.mark.integration  # the demo starts an embedded Mosquitto


@pytest.mark.slow
async def test_twenty_machines_reach_the_target_on_unseen_machines(tmp_path: Path) -> None:
    setup = await asyncio.to_thread(prepare_demo, tmp_path / "demo", task="vibration",
                                    devices=20)
    progress = io.StringIO()

    result = await run_demo(setup, progress=progress)

    print(f"demo --task vibration: accuracy {result.final_accuracy} after {result.versions} "
          f"versions in {result.elapsed_s:.1f}s")
    assert progress.getvalue().startswith("fedmq demo: task vibration, 20 devices on ")
    assert result.final_accuracy is not None and result.final_accuracy >= 0.95, \
        progress.getvalue()
    assert result.stop_reason.startswith("target_metric"), progress.getvalue()
    # the exported model is a plain inference graph on the [N, 3*128] windows
    session = ort.InferenceSession(result.model_path)
    assert session.get_inputs()[0].shape[-1] == 3 * 128
