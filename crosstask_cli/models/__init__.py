"""Network definitions: ResNet encoder, skip decoders, TaskTransferNets and the assembled CrossTaskNet."""

from crosstask_cli.models.network import CrossTaskNet, ModelConfig, Predictions, build_model

__all__ = ["CrossTaskNet", "ModelConfig", "Predictions", "build_model"]
