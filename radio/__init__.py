"""RADIO vision foundation models (AM-RADIO, RADIOv2.x, E-RADIO, C-RADIOv2/v3/v4), loadable through torch.hub.

Quick start::

    import radio
    model = radio.radio_model(version='c-radio_v4-h')   # eval mode
    summary, features = model(images)                  # images: (B, 3, H, W) in [0, 1]

The public names below are imported on first use (PEP 562), so that ``import radio.versions`` or
the ``radio`` command's ``--help`` do not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "radio.checkpoint",
    "UnsafeCheckpointError": "radio.checkpoint",
    "WeightsUnavailableError": "radio.download",
    "radio_model": "radio.factory",
    "RADIOModel": "radio.model",
    "PackedImages": "radio.packed",
    "pack_images": "radio.packed",
    "RadioOutput": "radio.outputs",
    "Resolution": "radio.outputs",
    "DEFAULT_VERSION": "radio.versions",
    "list_versions": "radio.versions",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import CheckpointError, UnsafeCheckpointError
    from .download import WeightsUnavailableError
    from .factory import radio_model
    from .model import RADIOModel
    from .outputs import RadioOutput, Resolution
    from .packed import PackedImages, pack_images
    from .versions import DEFAULT_VERSION, list_versions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'radio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
