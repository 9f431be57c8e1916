"""Model specs, baseline builders (embedded assets, local paths, hub ids) and loaders."""

from compresslab.errors import ModelUnavailable
from compresslab.models.spec import ModelSpec

__all__ = ["ModelSpec", "ModelUnavailable"]
