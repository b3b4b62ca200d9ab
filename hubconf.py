"""TorchHub entry points of RADIO: ``torch.hub.load('<owner>/<repo>', 'radio_model', version=...)``."""

dependencies = ["torch", "timm"]

from radio import radio_model  # noqa: E402,F401
