"""Model specs, baseline builders (embedded assets, local paths, hub ids) and loaders."""

from compresslab.models.spec import ModelSpec, ModelUnavailable

__all__ = ["ModelSpec", "ModelUnavailable"]
