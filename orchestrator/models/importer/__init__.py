"""Compile a user's exported ONNX inference graph into fedmq's training graphs.

``compile_model(data, loss="cross_entropy")`` folds the graph's shape arithmetic, writes the
gradient by reverse-mode differentiation in standard ONNX ops (one rule per op, see
``registry.RULES``) and returns the ``train_step`` / ``eval`` / ``infer`` graphs and initial
parameters; ``write_model_dir`` writes them where ``[model] graphs_dir`` reads them.
"""

from orchestrator.models.importer.compiler import ImportedModel, compile_model
from orchestrator.models.importer.errors import ModelImportError
from orchestrator.models.importer.heads import LOSSES
from orchestrator.models.importer.registry import RULES, supported_ops
from orchestrator.models.importer.write import write_model_dir

__all__ = ["LOSSES", "RULES", "ImportedModel", "ModelImportError", "compile_model",
           "supported_ops", "write_model_dir"]
