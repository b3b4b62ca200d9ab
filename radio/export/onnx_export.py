"""ONNX export of a RADIO model to one file (dynamic batch; ViTs: dynamic H and W), checked with onnxruntime.

The graph is a small wrapper (:class:`_OnnxGraph`) around the model's parts: the input conditioner
(unless preprocessing is external), the backbone (conditioned image -> tokens), the summary /
feature selection and the chosen adaptors. ``RADIOModel.forward``'s Python-side input checks stay
out of the graph. The export uses the ``torch.export`` based exporter (``torch.onnx.export(...,
dynamo=True)``) with derived dimensions ``H = step * gh``, ``W = step * gw`` so that the patch grid,
the ViTDet windows and the CPE position table (bilinear resize to ``max(h, w)`` squared, then a
top-left crop) are computed from the input shape at run time.

E-RADIO chooses its attention window from the input size, so its graph
differs per size: it is exported at one fixed ``(H, W)`` (the batch stays dynamic) with the window
the model would use at that size (its current window under the ``'fixed'`` policy, the optimal
window for that size under ``'auto'``), recorded in the metadata as ``eradio_window_size``.

Graph contract (see ``docs/deployment.md``):

* input ``image``: ``(B, 3, H, W)`` float32, RGB in ``[0, 1]`` (or already standardized with the
  ``norm_mean`` / ``norm_std`` of the metadata when exported with ``external_preprocessing``);
* outputs ``summary`` ``(B, summary_dim)``, ``features`` ``(B, h*w, D)`` (NLC; E-RADIO: ``h, w`` of
  its neck, ``H / stride``), and per adaptor
  ``<name>.summary`` ``(B, O)``, ``<name>.features`` ``(B, h*u*w*u, C)``; all in the export dtype;
* metadata (``metadata_props``): patch size, minimum step, preferred and maximum resolution,
  output widths, version, dtype, sizes, the backbone kind and E-RADIO window, and the conditioner
  statistics.

Requires the optional packages ``onnx``, ``onnxruntime`` and ``onnxscript`` (extra ``onnx``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .parity import flatten_outputs, parity_key, relative_error

if TYPE_CHECKING:
    from ..model import RADIOModel

__all__ = ["OnnxExportInfo", "OnnxVerificationError", "export_onnx", "verify_onnx", "read_onnx_metadata",
           "default_verify_sizes", "supports_dynamic_size", "default_fixed_size", "export_window_size",
           "ONNX_DTYPES", "FP16_TOLERANCE", "FP32_TOLERANCE", "DEFAULT_OPSET"]

_logger = logging.getLogger(__name__)

#: Export dtypes by name.
ONNX_DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
#: Default ``verify_onnx`` tolerance (relative L2 error per output) for float32 files.
FP32_TOLERANCE = 1e-5
#: Default tolerance for float16 files, measured against the float32 PyTorch model (a 2-block test
#: model reaches ~6e-4, a random-weight ViT-B/16 ~4e-4; trained weights with large activations
#: can lose more in float16, hence the margin).
FP16_TOLERANCE = 1e-2
#: Lowest supported opset (LayerNormalization needs 17).
MIN_OPSET = 17
#: Default opset (what the exporter builds natively).
DEFAULT_OPSET = 18
#: Name of the graph input.
INPUT_NAME = "image"
#: Largest patch-token count ``verify_onnx`` uses by default (keeps CPU verification affordable).
_MAX_VERIFY_TOKENS = 4096
#: Weights above this size go to an external-data file (protobuf files cannot exceed 2 GB).
_EXTERNAL_DATA_BYTES = 3 * 2**29  # 1.5 GiB, leaving room for the graph itself


class OnnxVerificationError(RuntimeError):
    """onnxruntime's outputs differ from the PyTorch model's by more than the tolerance."""


@dataclass(frozen=True)
class OnnxExportInfo:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file (weights above 2 GB go to ``<path>.data`` next to it).
        input_name: name of the image input.
        output_names: ``summary``, ``features``, then ``<adaptor>.summary``, ``<adaptor>.features``.
        dynamic: whether height and width are dynamic (the batch always is).
        export_size: ``(H, W)`` traced; for a fixed-size file the only size it accepts.
        window_size: E-RADIO's attention window baked into the file (``None`` for ViTs).
        opset: ONNX opset of the default domain.
        dtype: ``'float32'`` or ``'float16'`` (of the weights and outputs; the input is float32).
        metadata: the ``metadata_props`` written to the file.
    """

    path: Path
    input_name: str
    output_names: Tuple[str, ...]
    dynamic: bool
    export_size: Tuple[int, int]
    window_size: Optional[int]
    opset: int
    dtype: str
    metadata: Dict[str, str]


def _output_names(adaptor_names: Sequence[str]) -> Tuple[str, ...]:
    names = ["summary", "features"]
    for name in adaptor_names:
        names += [f"{name}.summary", f"{name}.features"]
    return tuple(names)


class _OnnxGraph(nn.Module):
    """The exported computation: conditioner -> backbone -> summary / features -> adaptors.

    Mirrors ``RADIOModel.forward`` with ``feature_fmt='NLC'`` for a chosen subset of adaptors,
    without its Python-side input checks, returning a flat tuple (ONNX outputs are positional).

    Args:
        model: the source model (its modules are shared, not copied).
        adaptor_names: adaptors to export, in output order.
        external_preprocessing: leave the input conditioner out of the graph.
        dtype: computation and output dtype.
        eradio_window: E-RADIO only: the attention window side used for every call (the graph is
            traced at one fixed size, so one window); ``None`` for ViTs.
    """

    def __init__(self, model: "RADIOModel", adaptor_names: Sequence[str], external_preprocessing: bool,
                 dtype: torch.dtype, eradio_window: Optional[int] = None) -> None:
        super().__init__()
        self.radio = model
        self.adaptor_names = list(adaptor_names)
        self.external_preprocessing = external_preprocessing
        self.dtype = dtype
        self.eradio_window = eradio_window

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        radio = self.radio
        x = image if self.external_preprocessing else radio.input_conditioner(image)
        x = x.to(self.dtype)
        if self.eradio_window is not None:  # neck (B, F, h, w) at the window baked into the file
            out = radio._extract_eradio(radio.model(x, window_size=self.eradio_window), "NLC", self.adaptor_names)
        else:
            out = radio._extract(radio.model(x), radio.model.grid_size(x), "NLC", self.adaptor_names)
        backbone = out["backbone"] if isinstance(out, dict) else out
        outputs = [backbone.summary, backbone.features]
        for name in self.adaptor_names:
            outputs += [out[name].summary, out[name].features]
        return tuple(t.to(self.dtype) for t in outputs)


# ----------------------------------------------------------------------------------------------
# Option checks


def _check_options(model: "RADIOModel", adaptor_names: Sequence[str], opset: int, dtype: str,
                   dynamic: bool, example_size: Optional[Tuple[int, int]]) -> None:
    if isinstance(adaptor_names, str):
        raise TypeError(f"adaptor_names must be a sequence of names, got the string {adaptor_names!r}; "
                        f"use adaptor_names=[{adaptor_names!r}].")
    if dtype not in ONNX_DTYPES:
        hint = ""
        if dtype == "bfloat16":
            hint = " (bfloat16 is not exported: onnxruntime's CPU provider and most builders take float16)"
        raise ValueError(f"dtype={dtype!r} cannot be exported{hint}; use one of {', '.join(ONNX_DTYPES)}.")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int (an ONNX opset version, at least {MIN_OPSET}), got {opset!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset!r} is too old: the graph needs LayerNormalization (opset 17); "
                         f"use opset >= {MIN_OPSET} (default 18).")
    loaded = list(model.adaptors.keys())
    for name in adaptor_names:
        if name not in model.adaptors:
            raise ValueError(f"Unknown adaptor {name!r}: the model has {loaded or 'no adaptors'}. Load it with "
                             f"radio_model(..., adaptor_names=[{name!r}]) or pick one of the loaded adaptors.")
    if len(set(adaptor_names)) != len(adaptor_names):
        raise ValueError(f"adaptor_names lists an adaptor twice: {list(adaptor_names)}; name each adaptor once.")
    if not supports_dynamic_size(model) and dynamic:
        raise ValueError(
            f"{_backbone_name(model)} cannot be exported with dynamic height/width: {_size_dependence(model)}, so "
            "the graph differs per size. Export one fixed size: pass dynamic=False and "
            "example_size=(H, W) (command line: --fixed-size HxW); a file then accepts only that size (any batch)."
        )
    if example_size is not None:
        if len(example_size) != 2:
            raise ValueError(f"example_size must be (height, width), got {example_size!r}")
        step = model.min_resolution_step
        h, w = (int(v) for v in example_size)
        if h <= 0 or w <= 0 or h % step or w % step:
            nearest = model.get_nearest_supported_resolution(max(h, 1), max(w, 1))
            raise ValueError(f"example_size={h}x{w} is not a positive multiple of min_resolution_step={step}; "
                             f"use e.g. {nearest.height}x{nearest.width}.")
        if dynamic and min(h, w) < 2 * step:
            # torch.export specializes a dimension of size 1 (one patch or window): the file could not
            # take other sizes
            raise ValueError(f"example_size={h}x{w} has a side of one step ({step} px), which torch.export cannot "
                             f"trace as a dynamic size; use sides of at least {2 * step} px (the traced size does "
                             "not limit the sizes a dynamic file accepts), or export a fixed size.")


def supports_dynamic_size(model: "RADIOModel") -> bool:
    """Whether ``model`` can be exported with dynamic height and width.

    True for the CPE ViT family, whose graph is the same for every input size. E-RADIO chooses
    its attention window from the input size, so it is exported at a fixed size.

    Args:
        model: a loaded ``RADIOModel``.

    Returns:
        Whether ``export_onnx(model, ..., dynamic=True)`` is possible.
    """
    from ..backbone import RadioViT

    return isinstance(model.model, RadioViT)


def _is_eradio(model: "RADIOModel") -> bool:
    from ..eradio import ERadioBackbone

    return isinstance(model.model, ERadioBackbone)


def _backbone_name(model: "RADIOModel") -> str:
    return "E-RADIO" if _is_eradio(model) else f"The {type(model.model).__name__} backbone"


def _size_dependence(model: "RADIOModel") -> str:
    if _is_eradio(model):
        return "its attention window is chosen from the input size"
    return "its structure depends on the input size"


def default_fixed_size(model: "RADIOModel") -> Optional[Tuple[int, int]]:
    """The size of a fixed-size export when none is given: the preferred resolution, if known.

    Args:
        model: a loaded ``RADIOModel``.

    Returns:
        ``(H, W)`` (rounded to a supported size), or ``None`` when the model states no preferred
        resolution (a file loaded without a release name).
    """
    pref = model.preferred_resolution
    if pref is None:
        return None
    res = model.get_nearest_supported_resolution(*pref)
    return int(res.height), int(res.width)


def export_window_size(model: "RADIOModel", size: Tuple[int, int]) -> Optional[int]:
    """E-RADIO's attention window for an input of ``size``: the one the model's forward would use.

    Under ``model.window_policy == 'fixed'`` that is the backbone's current window (set by
    ``change_window_size`` / ``set_optimal_window_size``); under ``'auto'`` the optimal window for
    ``size``.

    Args:
        model: a loaded ``RADIOModel``.
        size: ``(H, W)`` in pixels.

    Returns:
        The window side, or ``None`` for a ViT (no size-dependent window).
    """
    if not _is_eradio(model):
        return None
    from ..eradio import optimal_window_size

    if model.window_policy == "auto":
        return optimal_window_size(tuple(int(v) for v in size))
    return int(model.model.window_size)


def _default_example_size(model: "RADIOModel", dynamic: bool) -> Tuple[int, int]:
    step = model.min_resolution_step
    if not dynamic:
        fixed = default_fixed_size(model)
        if fixed is not None:
            return fixed
    # Small and non-square, neither side 1 patch (torch.export specializes sizes 0 and 1) and not
    # the table size, so nothing in the trace can collapse onto a special case.
    return 3 * step, 2 * step


# ----------------------------------------------------------------------------------------------
# Metadata


def _position_table_px(model: "RADIOModel") -> Optional[int]:
    """Side of the CPE position table in pixels (``None`` for backbones without one)."""
    from ..backbone import RadioViT

    if not isinstance(model.model, RadioViT):
        return None
    return int(model.model.patch_generator.grid_size * model.patch_size)


def _metadata(model: "RADIOModel", info: Dict[str, object],
              outputs: Sequence[torch.Tensor], names: Sequence[str]) -> Dict[str, str]:
    """String metadata of the file (JSON for lists and mappings)."""
    cond = model.input_conditioner
    mean = getattr(cond, "norm_mean", None)  # None once made external (identity)
    std = getattr(cond, "norm_std", None)
    pref = model.preferred_resolution
    meta: Dict[str, object] = {
        "format": "radio-onnx/1",
        "version": model.version or "",
        "patch_size": model.patch_size,
        "min_resolution_step": model.min_resolution_step,
        "preferred_resolution": f"{pref.height}x{pref.width}" if pref is not None else "",
        "max_resolution": model.max_resolution if model.max_resolution is not None else "",
        "position_table_size": _position_table_px(model) or "",
        "vitdet_window_size": model.window_size or "",
        "backbone": "eradio" if _is_eradio(model) else "vit",
        "eradio_window_size": info["window"] if info["window"] is not None else "",
        "summary_dim": outputs[0].shape[-1],
        "feature_dim": outputs[1].shape[-1],
        "adaptors": json.dumps(list(info["adaptor_names"])),  # type: ignore[arg-type]
        "input_name": INPUT_NAME,
        "output_names": json.dumps(list(names)),
        "output_widths": json.dumps({n: int(t.shape[-1]) for n, t in zip(names, outputs)}),
        "feature_upsample": json.dumps({n: int(model.adaptors[n].upsample_factor or 1)
                                        for n in info["adaptor_names"]}),  # type: ignore[union-attr]
        "feature_layout": "NLC",
        "dtype": info["dtype"],
        "input_dtype": "float32",
        "dynamic": str(bool(info["dynamic"])).lower(),
        "export_size": "{}x{}".format(*info["example_size"]),  # type: ignore[str-format]
        "external_preprocessing": str(bool(info["external_preprocessing"])).lower(),
        "norm_mean": json.dumps([float(v) for v in mean.flatten()]) if mean is not None else "",
        "norm_std": json.dumps([float(v) for v in std.flatten()]) if std is not None else "",
        "torch_version": torch.__version__,
    }
    return {k: str(v) for k, v in meta.items()}


def read_onnx_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The ``metadata_props`` of an exported file (weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# ----------------------------------------------------------------------------------------------
# Export


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the duration, restoring every submodule's flag after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _cast_parts(model: "RADIOModel", dtype: torch.dtype, adaptor_names: Sequence[str]) -> "RADIOModel":
    """``model`` itself when its parts already run in ``dtype``; else a copy with them cast.

    The input conditioner keeps float32 statistics (the input is float32 in both export dtypes).
    """
    parts: List[nn.Module] = [model.model, model.feature_normalizer] + [model.adaptors[n] for n in adaptor_names]
    tensors = [t for p in parts for t in list(p.parameters()) + list(p.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype for t in tensors):
        return model
    clone = copy.deepcopy(model)
    clone.model.to(dtype)
    clone.feature_normalizer.to(dtype)
    for n in adaptor_names:
        clone.adaptors[n].to(dtype)
    return clone


def _dynamic_shapes(step: int, dynamic: bool) -> Dict[str, Dict[int, object]]:
    from torch.export import Dim

    shapes: Dict[int, object] = {0: Dim("batch", min=1)}
    if dynamic:
        # Derived dims: the exporter knows H and W are multiples of the step, so the patch grid
        # and ViTDet window counts are exact integer expressions of the input shape.
        shapes[2] = step * Dim("grid_h", min=1)
        shapes[3] = step * Dim("grid_w", min=1)
    return {"image": shapes}


def export_onnx(model: "RADIOModel", path: Union[str, Path], *, adaptor_names: Sequence[str] = (),
                opset: int = DEFAULT_OPSET,
                dtype: str = "float32", external_preprocessing: bool = False,
                example_size: Optional[Tuple[int, int]] = None, dynamic: bool = True,
                verify: bool = False) -> OnnxExportInfo:
    """Export ``model`` (backbone summary and features, plus chosen adaptors) to one ONNX file.

    Args:
        model: a loaded ``RADIOModel`` (exported with eval-mode numerics; its state is not changed).
        path: the ``.onnx`` file to write; models above 2 GB also write ``<name>.data`` beside it.
        adaptor_names: loaded adaptors to include; their outputs are named ``<name>.summary`` and
            ``<name>.features``.
        opset: ONNX opset (>= 17).
        dtype: ``'float32'`` or ``'float16'``: weights, computation and outputs. The input stays
            float32 (standardization runs in float32, then casts).
        external_preprocessing: leave the input conditioner out of the graph; the input must then
            be ``(x - norm_mean) / norm_std`` (values in the metadata).
        example_size: ``(H, W)`` traced; with ``dynamic=False`` the only size the file accepts.
            Default: a small non-square size when dynamic, else the preferred resolution (else
            ``3 * step x 2 * step``).
        dynamic: dynamic height and width (any multiple of ``min_resolution_step``). The batch is
            always dynamic. E-RADIO needs ``dynamic=False``: it is exported at ``example_size``
            with the window :func:`export_window_size` gives for that size.
        verify: run :func:`verify_onnx` at the default sizes and raise if it fails.

    Returns:
        An :class:`OnnxExportInfo`.

    Raises:
        ValueError: bad ``dtype`` / ``opset`` / ``example_size``, unknown adaptor, or a model that
            cannot be exported with dynamic sizes (E-RADIO with ``dynamic=True``).
        OnnxVerificationError: with ``verify=True``, onnxruntime disagrees with the model.
    """
    adaptor_names = list(adaptor_names) if not isinstance(adaptor_names, str) else adaptor_names
    _check_options(model, adaptor_names, opset, dtype, dynamic, example_size)
    try:
        for required in ("onnx", "onnxscript"):  # the exporter needs both
            importlib.import_module(required)
    except ImportError as exc:
        raise ImportError("ONNX export needs the optional packages onnx and onnxscript: "
                          "pip install 'radio-hub[onnx]'.") from exc
    path = Path(path)
    torch_dtype = ONNX_DTYPES[dtype]
    size = tuple(int(v) for v in example_size) if example_size is not None else _default_example_size(model, dynamic)
    window = export_window_size(model, size)
    source = _cast_parts(model, torch_dtype, adaptor_names)
    graph = _OnnxGraph(source, adaptor_names, external_preprocessing, torch_dtype, eradio_window=window)
    names = _output_names(adaptor_names)
    device = next(source.parameters()).device
    example = torch.rand(2, 3, *size, device=device)
    with _eval_mode(graph), torch.no_grad():
        outputs = graph(example)
        _logger.info("exporting %s (%s, opset %d, %s sizes, traced at %dx%d%s)", type(model.model).__name__, dtype,
                     opset, "dynamic" if dynamic else "fixed", *size,
                     f", attention window {window}" if window is not None else "")
        program = torch.onnx.export(
            graph, (example,), dynamo=True, dynamic_shapes=_dynamic_shapes(model.min_resolution_step, dynamic),
            input_names=[INPUT_NAME], output_names=list(names), opset_version=opset, optimize=True,
            verbose=False)
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no program; torch >= 2.6 with dynamo=True is required.")
    meta = _metadata(model, dict(adaptor_names=adaptor_names, dtype=dtype, dynamic=dynamic, example_size=size,
                                 external_preprocessing=external_preprocessing, window=window), outputs, names)
    program.model.metadata_props.update(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                       if v.const_value is not None)
    external = weight_bytes > _EXTERNAL_DATA_BYTES
    if external:
        _logger.info("weights take %.2f GB: writing them to %s.data", weight_bytes / 1e9, path.name)
    program.save(str(path), external_data=external)
    info = OnnxExportInfo(path=path, input_name=INPUT_NAME, output_names=names, dynamic=dynamic,
                          export_size=(size[0], size[1]), window_size=window,
                          opset=_default_opset(program, opset), dtype=dtype, metadata=meta)
    if verify:
        verify_onnx(model, path)
    return info


def _default_opset(program: object, requested: int) -> int:
    imports = getattr(getattr(program, "model", None), "opset_imports", {}) or {}
    return int(imports.get("", requested))


# ----------------------------------------------------------------------------------------------
# Verification


def default_verify_sizes(model: "RADIOModel", metadata: Optional[Dict[str, str]] = None) -> List[Tuple[int, int]]:
    """Sizes :func:`verify_onnx` checks: square, non-square (both orientations), above the table.

    For fixed-size files only the export size. The size above the position table is left out
    (with a log message) when it would exceed 4096 patch tokens, which would make a CPU run slow.
    """
    meta = metadata or {}
    if meta.get("dynamic") == "false":
        h, w = (int(v) for v in meta["export_size"].split("x"))
        return [(h, w)]
    step = model.min_resolution_step
    table = _position_table_px(model)
    sizes = [(4 * step, 4 * step), (4 * step, 2 * step), (2 * step, 5 * step)]
    if table is not None:
        above = ((table // step) + 1) * step
        big = (above + step, above)
        if (big[0] // model.patch_size) * (big[1] // model.patch_size) <= _MAX_VERIFY_TOKENS:
            sizes.append(big)
        else:
            _logger.info("verify_onnx: skipping the size above the %d px position table (%dx%d is too large "
                         "for a CPU check); pass sizes=[...] to include it.", table, *big)
    return sizes


def _check_verify_sizes(model: "RADIOModel", path: Union[str, Path], meta: Dict[str, str],
                        sizes: Sequence[Tuple[int, int]]) -> None:
    """Refuse sizes a fixed-size file cannot take, and an E-RADIO window that changed since the export."""
    if meta.get("dynamic") != "false":
        return
    fixed = meta.get("export_size", "")
    for h, w in sizes:
        if f"{h}x{w}" != fixed:
            raise ValueError(f"{path} is a fixed-size file ({fixed}); it cannot be checked at {h}x{w}. "
                             f"Pass sizes=None (its export size) or export with the size you need.")
    recorded = meta.get("eradio_window_size", "")
    if recorded:
        now = export_window_size(model, (sizes[0][0], sizes[0][1])) if sizes else None
        if now is not None and now != int(recorded):
            raise ValueError(f"{path} was exported with the E-RADIO attention window {recorded}, but the model "
                             f"now uses {now} at {fixed} (window_policy={model.window_policy!r}); restore it "
                             f"(model.change_window_size({recorded})) or export the file again.")


def verify_onnx(model: "RADIOModel", path: Union[str, Path], sizes: Optional[Sequence[Tuple[int, int]]] = None,
                batch: int = 2, tol: Optional[float] = None) -> Dict[str, float]:
    """Run the file with onnxruntime (CPU) and compare it with ``model``'s float32 eval forward.

    The reference is ``model(x)`` (``model`` itself, in float32 and eval mode, on a copy if needed),
    so a float16 file is measured against the float32 model.

    Args:
        model: the model the file was exported from.
        path: the ``.onnx`` file.
        sizes: ``(H, W)`` sizes; default :func:`default_verify_sizes`.
        batch: images per run.
        tol: largest accepted relative L2 error per output; default 1e-5 for float32 files and
            :data:`FP16_TOLERANCE` for float16 files. ``float('inf')`` only measures.

    Returns:
        ``{'<output>@<H>x<W>': relative error}`` for every output and size.

    Raises:
        OnnxVerificationError: an output's error exceeds ``tol`` or its shape differs.
        ValueError: a size other than the export size for a fixed-size file, or an E-RADIO model
            that now uses another attention window than the one in the file.
    """
    import onnxruntime as ort

    meta = read_onnx_metadata(path)
    if tol is None:
        tol = FP16_TOLERANCE if meta.get("dtype") == "float16" else FP32_TOLERANCE
    adaptor_names = json.loads(meta.get("adaptors", "[]"))
    external = meta.get("external_preprocessing") == "true"
    sizes = [(int(h), int(w)) for h, w in sizes] if sizes is not None else default_verify_sizes(model, meta)
    _check_verify_sizes(model, path, meta, sizes)
    reference = _cast_parts(model, torch.float32, adaptor_names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    errors: Dict[str, float] = {}
    failures: List[str] = []
    gen = torch.Generator().manual_seed(0)
    device = next(reference.parameters()).device
    with _eval_mode(reference), torch.no_grad():
        for h, w in sizes:
            x = torch.rand(batch, 3, h, w, generator=gen).to(device)
            out = reference(x)
            flat = [t.cpu() for t in flatten_outputs(out, adaptor_names).values()]
            feed = reference.input_conditioner(x).float() if external else x
            got = session.run(names, {input_name: feed.cpu().numpy()})
            for name, expected, actual in zip(names, flat, got):
                key = parity_key(name, h, w)
                actual_t = torch.from_numpy(actual)
                if tuple(actual_t.shape) != tuple(expected.shape):
                    failures.append(f"{key}: shape {tuple(actual_t.shape)} != {tuple(expected.shape)}")
                    errors[key] = float("inf")
                    continue
                errors[key] = relative_error(actual_t, expected)
                if not errors[key] <= tol:
                    failures.append(f"{key}: relative error {errors[key]:.3e} > {tol:.1e}")
            _logger.info("verify_onnx %dx%d: max relative error %.3e", h, w,
                         max(errors[parity_key(n, h, w)] for n in names))
    if failures:
        raise OnnxVerificationError(f"{path} does not reproduce the model: " + "; ".join(failures))
    return errors

