"""The exported models a checkout keeps in ``examples/models``, compiled for training (what
the demo's imported-model tasks and the agent benchmark train)."""

from __future__ import annotations

from pathlib import Path

import fedmq
from fedmq.errors import ToolError
from orchestrator.models.importer import ImportedModel, ModelImportError, compile_model

__all__ = ["compile_example"]


def compile_example(model_file: Path, *, needed_by: str,
                    error: type[ToolError] = ToolError) -> tuple[bytes, ImportedModel]:
    """``model_file`` (relative to the checkout that holds the ``fedmq`` package) as exported
    and as compiled with the cross-entropy loss; one-line ``error`` when it is missing or does
    not compile."""
    source = Path(fedmq.__file__).resolve().parent.parent / model_file
    try:
        exported = source.read_bytes()
    except OSError:
        raise error(f"{needed_by} needs {model_file} from a fedmq checkout "
                    f"(not found at {source})") from None
    try:
        return exported, compile_model(exported, loss="cross_entropy")
    except ModelImportError as exc:
        raise error(f"cannot compile {source}: {exc}") from None
