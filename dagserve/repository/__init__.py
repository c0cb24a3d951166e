"""Model repositories on disk: discovery, versions and configuration (pbtxt or YAML)."""

from .config import ModelConfig
from .loader import ModelSource, load_config, scan

__all__ = ["ModelConfig", "ModelSource", "load_config", "scan"]
