"""Text towers of the CLIP-like teachers, for the text-capable adaptors.

Two teacher types carry a text tower next to their adaptor heads:

* ``open_clip``: the text half of an open_clip CLIP model, named by the teacher's ``model``
  (an open_clip model config) and ``pretrained`` (an open_clip pretrained tag or a local file),
  https://github.com/mlfoundations/open_clip;
* ``siglip2``: the text model of a Hugging Face SigLIP2 checkpoint (Tschannen et al., "SigLIP 2",
  https://arxiv.org/abs/2502.14786).

Both expose ``tokenizer(texts)`` and ``encode_text(tokens, normalize=False)``. Unlike the original
implementation, which downloaded and built the whole CLIP model (vision tower included) while
loading RADIO, the tower here is built lazily on the first text call, and only its text half is
ever instantiated. Image-side outputs therefore need neither text weights nor network access.
open_clip and transformers are imported only when a text tower or tokenizer is first needed.
"""

import abc
import functools
import logging
import os
import string
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SIGLIP2_MAX_LENGTH",
    "SIGLIP2_MODEL_IDS",
    "OpenClipTextEncoder",
    "SigLIP2TextEncoder",
    "TextEncoder",
    "TextWeightsUnavailableError",
    "UnknownTextModelError",
    "build_text_encoder",
    "canonicalize_text",
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Teacher ``model`` values of ``siglip2`` teachers and the Hugging Face repositories they name.
SIGLIP2_MODEL_IDS: Mapping[str, str] = {
    "siglip2-g-384": "google/siglip2-giant-opt-patch16-384",
    "siglip2-so400m": "google/siglip2-so400m-patch16-naflex",
}
# SigLIP2 was trained on texts padded (and truncated) to exactly 64 tokens.
SIGLIP2_MAX_LENGTH = 64

# Keys of a full open_clip checkpoint that the text tower does not use.
_OPEN_CLIP_NON_TEXT_PREFIXES = ("visual.",)
_OPEN_CLIP_NON_TEXT_KEYS = ("logit_scale", "logit_bias")
_OPEN_CLIP_TEXT_PREFIX = "text."


class UnknownTextModelError(ValueError, KeyError):
    """A teacher names a text model this package has no tower for (a ``KeyError`` too, as in the original)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class TextWeightsUnavailableError(RuntimeError):
    """The files of a teacher's text tower (weights, config or tokenizer) cannot be obtained.

    Raised on first text use when a download is impossible (no network, ``HF_HUB_OFFLINE=1``) and
    the files are not cached, or when a local path given for them does not exist.
    """


def _text_weights_hint(teacher_name: str, what: str) -> str:
    """How to supply text weights for ``teacher_name``; ``what`` describes the expected path."""
    name = teacher_name or "<adaptor name>"
    return (
        f"Either run once with network access so that the files are cached, or pass {what} "
        f"with radio_model(..., text_weights={{'{name}': '/path/...'}})."
    )


def _import_open_clip() -> Any:
    """Import open_clip, or explain which package provides it."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "The text tower of 'open_clip' teachers needs the open_clip package: "
            "pip install open_clip_torch"
        ) from err
    return open_clip


def _import_transformers() -> Any:
    """Import transformers, or explain which package (and version) provides SigLIP2."""
    try:
        import transformers
        # SigLIP2 arrived in transformers 4.49.
        from transformers import Siglip2TextModel  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "The text tower of 'siglip2' teachers needs transformers with SigLIP2 support: "
            "pip install -U transformers"
        ) from err
    return transformers


def _to_device(tokens: Any, device: torch.device) -> Any:
    """Move a token tensor or a mapping of tensors (``BatchEncoding``, dict) to ``device``."""
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if hasattr(tokens, "to"):  # transformers.BatchEncoding
        return tokens.to(device)
    if isinstance(tokens, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    raise TypeError(
        f"Expected a token tensor or a mapping of tensors, got {type(tokens).__name__}."
    )


class TextEncoder(nn.Module, abc.ABC):
    """A lazily built text tower with its tokenizer.

    Nothing is downloaded or built at construction. The first ``encode_text`` (or ``load``) builds
    the tower on the device and in the dtype that this module has then (it follows ``.to()`` calls
    made before through a zero-size anchor buffer) and registers it as the submodule named by
    ``tower_attr``, so later ``.to()``/``.cuda()`` calls move it. The tower is put in the same
    train/eval mode as this module.
    """

    tower_attr: str = "tower"

    def __init__(self, teacher_name: str = "") -> None:
        super().__init__()
        self.teacher_name = teacher_name
        # Device/dtype anchor: moved and cast with the module, never saved.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def reset_non_persistent_buffers(self) -> None:
        """Put the anchor on the CPU in float32 when the module was built on the meta device."""
        if self._anchor.is_meta:
            self._anchor = torch.empty(0)

    @property
    def is_loaded(self) -> bool:
        """Whether the text tower has been built."""
        return self.tower_attr in self._modules

    def load(self) -> nn.Module:
        """Build the text tower now (if not built yet) and return it.

        Raises:
            TextWeightsUnavailableError: the weights (or config) cannot be obtained.
            ImportError: the library providing the tower is not installed.
        """
        if not self.is_loaded:
            tower = self._build_tower(self._anchor.dtype)
            tower.to(device=self._anchor.device, dtype=self._anchor.dtype)
            tower.train(self.training)
            setattr(self, self.tower_attr, tower)
        return self._modules[self.tower_attr]

    @abc.abstractmethod
    def _build_tower(self, dtype: torch.dtype) -> nn.Module:
        """Create the tower with its weights loaded (on CPU; ``dtype`` is a hint)."""

    @abc.abstractmethod
    def tokenizer(self, texts: Union[str, Sequence[str]]) -> Any:
        """Tokenize ``texts`` into the input that ``encode_text`` takes (on CPU)."""

    @abc.abstractmethod
    def encode_text(self, tokens: Any, normalize: bool = False) -> torch.Tensor:
        """Embed tokens from ``tokenizer`` into the teacher's space, shape ``(B, D_text)``."""


class _OpenClipTextTower(nn.Module):
    """The text half of an open_clip model.

    Holds open_clip's text tower under ``text``, as open_clip's ``CustomTextCLIP`` does, so that its
    state-dict keys are those of a checkpoint in that layout minus the ``text.`` prefix.
    """

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.text = text

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed token ids ``(B, L)`` into ``(B, D)``, L2-normalized if ``normalize``."""
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features


class OpenClipTextEncoder(TextEncoder):
    """Text tower of an ``open_clip`` teacher.

    Only the text tower of the open_clip model config is built, from open_clip's own text-tower
    builder; the image-tower weights in the checkpoint are skipped. Token ids come from
    ``open_clip.get_tokenizer(model)``, and ``encode_text`` equals open_clip's
    ``model.encode_text(tokens, normalize=normalize)``.

    Args:
        model: open_clip model config name, e.g. ``'ViT-H-14-378-quickgelu'`` (an ``'hf-hub:'``
            name also works).
        pretrained: open_clip pretrained tag (e.g. ``'dfn5b'``) or path of a checkpoint file.
        weights: local checkpoint file that replaces ``pretrained`` (for offline use).
        teacher_name: adaptor name, used in error messages.
    """

    tower_attr = "oc_model"

    def __init__(
        self,
        model: str,
        pretrained: Optional[str] = None,
        *,
        weights: Optional[PathLike] = None,
        teacher_name: str = "",
    ) -> None:
        super().__init__(teacher_name)
        self.model_name = model
        self.pretrained = pretrained
        self.weights = os.fspath(weights) if weights is not None else None
        self._tokenizer: Any = None

    def extra_repr(self) -> str:
        source = self.weights if self.weights is not None else self.pretrained
        return f"model={self.model_name!r}, weights={source!r}, loaded={self.is_loaded}"

    def _unavailable(self, reason: str) -> TextWeightsUnavailableError:
        return TextWeightsUnavailableError(
            f"Text weights of teacher '{self.teacher_name}' (open_clip model '{self.model_name}', "
            f"pretrained '{self.pretrained}') are not available: {reason}. "
            + _text_weights_hint(self.teacher_name, "the open_clip checkpoint file")
        )

    def _model_config(self) -> dict:
        """The open_clip model config (``embed_dim``, ``quick_gelu``, ``text_cfg``, ...)."""
        open_clip = _import_open_clip()
        try:
            config = open_clip.get_model_config(self.model_name)
        except (OSError, RuntimeError) as err:  # an 'hf-hub:' config that cannot be fetched
            raise self._unavailable(f"its config cannot be fetched ({err})") from err
        if config is None:
            raise ValueError(
                f"Teacher '{self.teacher_name}': '{self.model_name}' is not an open_clip model "
                "config; see open_clip.list_models() for the available names."
            )
        if "multimodal_cfg" in config:
            raise ValueError(
                f"Teacher '{self.teacher_name}': open_clip model '{self.model_name}' is a CoCa "
                "model, whose text encoder is not supported."
            )
        return config

    def _checkpoint_path(self) -> str:
        """Local path of the full open_clip checkpoint, downloading it if needed."""
        open_clip = _import_open_clip()
        if self.weights is not None:
            if not os.path.isfile(self.weights):
                raise self._unavailable(f"'{self.weights}' is not an existing checkpoint file")
            return self.weights
        if self.model_name.startswith("hf-hub:"):
            from open_clip.pretrained import download_pretrained_from_hf

            try:
                return download_pretrained_from_hf(self.model_name[len("hf-hub:"):])
            except (OSError, RuntimeError, ValueError) as err:
                raise self._unavailable(f"the download failed ({err})") from err
        if not self.pretrained or not isinstance(self.pretrained, str):
            raise self._unavailable("the teacher names no open_clip pretrained tag or file")
        pretrained_cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained)
        if pretrained_cfg:
            try:
                path = open_clip.download_pretrained(pretrained_cfg)
            except (OSError, RuntimeError, ValueError) as err:
                raise self._unavailable(f"the download failed ({err})") from err
            if not path:
                raise self._unavailable("open_clip has no download location for this tag")
            return path
        if os.path.isfile(self.pretrained):
            return self.pretrained
        tags = open_clip.list_pretrained_tags_by_model(self.model_name)
        raise self._unavailable(
            f"'{self.pretrained}' is neither a pretrained tag of this model (known tags: {tags}) "
            "nor an existing file"
        )

    def _build_tower(self, dtype: torch.dtype) -> nn.Module:
        _import_open_clip()
        # open_clip has no public text-only builder; its private one is what CLIP/CustomTextCLIP
        # call, so the tower matches open_clip's exactly (QuickGELU, norm kwargs, HF text towers).
        from open_clip.model import _build_text_tower

        config = self._model_config()
        checkpoint = self._checkpoint_path()
        text_cfg = dict(config["text_cfg"])
        if "hf_model_name" in text_cfg:
            # The full checkpoint overwrites the HF text weights, so never download them.
            text_cfg["hf_model_pretrained"] = False
        _logger.info(
            "Building the text tower of open_clip model '%s' from %s", self.model_name, checkpoint
        )
        try:
            text = _build_text_tower(
                config["embed_dim"], text_cfg, quick_gelu=config.get("quick_gelu", False)
            )
        except OSError as err:  # HF text towers fetch their transformers config
            raise self._unavailable(f"the text tower config cannot be fetched ({err})") from err
        tower = _OpenClipTextTower(text)
        _load_open_clip_text_weights(tower, checkpoint)
        return tower

    def tokenizer(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """Tokenize with ``open_clip.get_tokenizer(model)``.

        Args:
            texts: one string or a sequence of strings.

        Returns:
            Token ids ``(B, context_length)`` (int64, on CPU).
        """
        if self._tokenizer is None:
            open_clip = _import_open_clip()
            try:
                self._tokenizer = open_clip.get_tokenizer(self.model_name)
            except (OSError, RuntimeError, ValueError) as err:  # HF tokenizers are downloaded
                raise TextWeightsUnavailableError(
                    f"The tokenizer of teacher '{self.teacher_name}' (open_clip model "
                    f"'{self.model_name}') is not available: {err}. Run once with network access "
                    "so that the Hugging Face cache holds it."
                ) from err
        return self._tokenizer([texts] if isinstance(texts, str) else list(texts))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed token ids; builds the tower on first use.

        Args:
            tokens: token ids ``(B, L)`` from ``tokenizer``; moved to this module's device.
            normalize: L2-normalize the embeddings.

        Returns:
            Text embeddings ``(B, embed_dim)``.
        """
        tower = self.load()
        return tower.encode_text(_to_device(tokens, self._anchor.device), normalize=normalize)


def _read_open_clip_state_dict(path: str) -> dict:
    """Read a full open_clip checkpoint, without the image-tower tensors where the format allows."""
    if path.endswith((".npz", ".npy")):
        raise ValueError(
            f"'{path}' is a big_vision numpy checkpoint; only PyTorch (.pt/.bin/.pth) and "
            ".safetensors open_clip checkpoints are supported for text towers."
        )
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        # Read only the tensors the text tower needs; image towers are most of the file.
        with safe_open(path, framework="pt", device="cpu") as f:
            keys = [k for k in f.keys() if not k.startswith(_OPEN_CLIP_NON_TEXT_PREFIXES)]
            return {k: f.get_tensor(k) for k in keys}
    try:
        # Memory-mapped, so that the image-tower tensors are never read from disk.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs torch.save's zip format; older files are read whole
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # The wrappers open_clip's own reader accepts: training checkpoints, TorchScript archives
    # (OpenAI's releases) and DistributedDataParallel 'module.' prefixes.
    if isinstance(checkpoint, torch.jit.ScriptModule):
        checkpoint = {
            k: v
            for k, v in checkpoint.state_dict().items()
            if k not in ("input_resolution", "context_length", "vocab_size")
        }
    elif isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"'{path}' holds no open_clip state dict.")
    if next(iter(checkpoint)).startswith("module."):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def _load_open_clip_text_weights(tower: _OpenClipTextTower, path: str) -> None:
    """Load the text weights of a full open_clip checkpoint into ``tower``, strictly.

    Both checkpoint layouts are accepted: ``CLIP`` (text keys at the top level) and
    ``CustomTextCLIP`` (text keys under ``text.``). Only the image tower (``visual.*``),
    ``logit_scale`` and ``logit_bias`` are skipped; any other non-text key is an error.
    """
    from open_clip.model import convert_to_custom_text_state_dict, resize_text_pos_embed

    state = convert_to_custom_text_state_dict(_read_open_clip_state_dict(path))
    # Kept by older HF text towers, a non-persistent buffer in current transformers.
    state.pop("text.transformer.embeddings.position_ids", None)

    text_keys, skipped, unexpected = set(), [], []
    for key in state:
        if key.startswith(_OPEN_CLIP_TEXT_PREFIX):
            text_keys.add(key)
        elif key.startswith(_OPEN_CLIP_NON_TEXT_PREFIXES) or key in _OPEN_CLIP_NON_TEXT_KEYS:
            skipped.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"'{path}' is not an open_clip checkpoint of the expected model: unexpected keys "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}."
        )
    _logger.debug("Skipped %d image-tower/logit keys of %s", len(skipped), path)
    try:
        # As open_clip does: a checkpoint with another text context length is interpolated.
        resize_text_pos_embed(state, tower)
        prefix_len = len(_OPEN_CLIP_TEXT_PREFIX)
        text_state = {k[prefix_len:]: v for k, v in state.items() if k in text_keys}
        tower.text.load_state_dict(text_state, strict=True)
    except (AssertionError, RuntimeError) as err:  # open_clip asserts equal widths
        raise ValueError(
            f"The text weights in '{path}' do not match the text tower of the open_clip "
            f"model: {err}"
        ) from err


def canonicalize_text(text: str) -> str:
    """Canonicalize a prompt the way SigLIP2 texts were during training.

    In order: ``_`` becomes a space, every ``string.punctuation`` character is deleted, the text is
    lower-cased, whitespace runs collapse to single spaces, and the ends are stripped.
    """
    text = text.replace("_", " ")
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = text.lower()
    return " ".join(text.split()).strip()


@functools.lru_cache(maxsize=None)
def _siglip2_text_tower_class() -> type:
    """``Siglip2TextModel`` that expects, and quietly skips, the non-text keys of full checkpoints.

    Built on first use so that transformers is imported only then.
    """
    transformers = _import_transformers()

    class _Siglip2TextTower(transformers.Siglip2TextModel):
        # A full SigLIP2 checkpoint also holds the vision tower and the logit scale/bias; without
        # this, transformers logs every one of those keys as unexpected.
        _keys_to_ignore_on_load_unexpected = [r"^vision_model\.", r"^logit_scale$", r"^logit_bias$"]

    # Importable as radio.text_encoders._Siglip2TextTower (see __getattr__), so pickles of a
    # built tower load again.
    _Siglip2TextTower.__qualname__ = "_Siglip2TextTower"
    return _Siglip2TextTower


def __getattr__(name: str) -> Any:
    """Create ``_Siglip2TextTower`` on demand (it needs transformers), e.g. when unpickling."""
    if name == "_Siglip2TextTower":
        return _siglip2_text_tower_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SigLIP2TextEncoder(TextEncoder):
    """Text tower of a ``siglip2`` teacher.

    Only ``Siglip2TextModel`` is instantiated, from the full checkpoint of the Hugging Face model
    that the teacher's ``model`` names (the vision tower's weights are skipped). Texts are
    canonicalized, then tokenized with the model's tokenizer padded and truncated to 64 tokens;
    ``encode_text`` returns the text model's ``pooler_output``.

    Args:
        model: teacher ``model``, a key of ``SIGLIP2_MODEL_IDS``.
        weights: local directory with the model (config and weights) and tokenizer files saved with
            ``save_pretrained`` (or a Hugging Face snapshot); replaces the Hub id (offline use).
        teacher_name: adaptor name, used in error messages.

    Raises:
        UnknownTextModelError: ``model`` is not a known SigLIP2 teacher model (a ``ValueError`` and ``KeyError``).
    """

    tower_attr = "text_model"

    def __init__(
        self, model: str, *, weights: Optional[PathLike] = None, teacher_name: str = ""
    ) -> None:
        super().__init__(teacher_name)
        if model not in SIGLIP2_MODEL_IDS:
            raise UnknownTextModelError(
                f"Teacher '{teacher_name}': unknown siglip2 model '{model}'. Known models: "
                + ", ".join(f"'{k}' ({v})" for k, v in SIGLIP2_MODEL_IDS.items())
            )
        self.model_name = model
        self.hf_id = SIGLIP2_MODEL_IDS[model]
        self.weights = os.fspath(weights) if weights is not None else None
        self._tokenizer: Any = None

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, source={self._source()!r}, loaded={self.is_loaded}"

    def _source(self) -> str:
        return self.weights if self.weights is not None else self.hf_id

    def _unavailable(
        self, what: str, err: Optional[BaseException] = None
    ) -> TextWeightsUnavailableError:
        reason = f" ({err})" if err is not None else ""
        return TextWeightsUnavailableError(
            f"The {what} of teacher '{self.teacher_name}' (siglip2 model '{self.model_name}', "
            f"Hugging Face model '{self.hf_id}') cannot be loaded from '{self._source()}'{reason}. "
            + _text_weights_hint(
                self.teacher_name,
                f"a local directory holding '{self.hf_id}' saved with save_pretrained (model and "
                "tokenizer)",
            )
        )

    def _check_weights_dir(self, what: str) -> None:
        if self.weights is not None and not os.path.isdir(self.weights):
            raise self._unavailable(what, FileNotFoundError(f"no directory '{self.weights}'"))

    def _build_tower(self, dtype: torch.dtype) -> nn.Module:
        self._check_weights_dir("text weights")
        tower_class = _siglip2_text_tower_class()
        _logger.info("Loading the SigLIP2 text model from %s", self._source())
        try:
            # No trust_remote_code: SigLIP2 is implemented in transformers itself, and allowing
            # remote code would execute Python files downloaded from the model repository.
            tower, info = tower_class.from_pretrained(
                self._source(), dtype=dtype, output_loading_info=True
            )
        except OSError as err:  # includes huggingface_hub errors and offline mode
            raise self._unavailable("text weights", err) from err
        # transformers would initialize missing weights randomly; a text tower must be complete.
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            raise ValueError(
                f"'{self._source()}' does not hold the SigLIP2 text model: missing keys "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}."
            )
        return tower

    def tokenizer(self, texts: Union[str, Sequence[str]]) -> Any:
        """Canonicalize and tokenize texts, padded and truncated to 64 tokens.

        The tokenizer is the one the model's ``AutoProcessor`` wraps (loaded with
        ``AutoTokenizer``, so no image processor is needed); the call matches
        ``processor(text=..., return_tensors='pt', max_length=64, padding='max_length',
        truncation=True)``.

        Args:
            texts: one string or a sequence of strings.

        Returns:
            A ``BatchEncoding`` with ``input_ids`` (and ``attention_mask``) of shape ``(B, 64)``.
        """
        if self._tokenizer is None:
            self._check_weights_dir("tokenizer")
            transformers = _import_transformers()
            try:
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(self._source())
            except OSError as err:
                raise self._unavailable("tokenizer", err) from err
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._tokenizer(
            [canonicalize_text(t) for t in texts],
            return_tensors="pt",
            max_length=SIGLIP2_MAX_LENGTH,
            padding="max_length",
            truncation=True,
        )

    def encode_text(self, tokens: Any, normalize: bool = False) -> torch.Tensor:
        """Embed tokens from ``tokenizer``; builds the tower on first use.

        Args:
            tokens: the ``BatchEncoding`` (or dict of tensors) from ``tokenizer``; moved to this
                module's device.
            normalize: L2-normalize the embeddings.

        Returns:
            ``pooler_output`` of the text model, ``(B, D_text)``.
        """
        tower = self.load()
        features = tower(**_to_device(tokens, self._anchor.device), return_dict=True).pooler_output
        return F.normalize(features, dim=-1) if normalize else features


def build_text_encoder(
    teacher: Mapping[str, Any], weights: Optional[PathLike] = None, *, lenient: bool = False
) -> Optional[TextEncoder]:
    """Create the (unbuilt) text encoder of a teacher, or ``None`` if its type has none.

    Args:
        teacher: one entry of the checkpoint's ``args.teachers`` (``name``, ``type``, ``model``,
            ``pretrained``).
        weights: local text weights replacing the download: a checkpoint file for ``open_clip``,
            a ``save_pretrained`` directory for ``siglip2``.
        lenient: a teacher whose text model this package cannot name gets no text tower (a
            logged warning) instead of an error; for Hugging Face repositories, whose original
            code builds no text towers at all.

    Returns:
        An ``OpenClipTextEncoder`` or ``SigLIP2TextEncoder``, or ``None`` for other teacher types.

    Raises:
        ValueError: the teacher lacks ``model`` or names an unknown SigLIP2 model.
    """
    teacher_type = teacher.get("type")
    if teacher_type not in ("open_clip", "siglip2"):
        return None
    name = str(teacher.get("name", ""))
    model = teacher.get("model")
    try:
        if not isinstance(model, str) or not model:
            raise ValueError(
                f"Teacher '{name}' of type '{teacher_type}' has no 'model' naming its text tower."
            )
        if teacher_type == "open_clip":
            return OpenClipTextEncoder(
                model, teacher.get("pretrained"), weights=weights, teacher_name=name
            )
        return SigLIP2TextEncoder(model, weights=weights, teacher_name=name)
    except ValueError as e:
        if not lenient:
            raise
        _logger.warning("%s; adaptor '%s' is loaded without a text tower.", e, name)
        return None
