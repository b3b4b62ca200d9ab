"""RADIO vision foundation models (AM-RADIO, RADIOv2.x, C-RADIOv2/v3/v4), loadable through torch.hub.

Quick start::

    import radio
    model = radio.radio_model(version='c-radio_v4-h')   # eval mode
    summary, features = model(images)                  # images: (B, 3, H, W) in [0, 1]
"""

from .checkpoint import CheckpointError, UnsafeCheckpointError
from .download import WeightsUnavailableError
from .factory import radio_model
from .model import RADIOModel
from .outputs import RadioOutput
from .versions import DEFAULT_VERSION, Resolution, list_versions

__all__ = [
    "CheckpointError",
    "DEFAULT_VERSION",
    "RADIOModel",
    "RadioOutput",
    "Resolution",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "list_versions",
    "radio_model",
]
