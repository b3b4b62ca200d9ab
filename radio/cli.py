"""The ``radio`` command line: ``radio extract``, ``radio visualize`` and ``radio versions``.

``radio extract`` writes the summary and dense features of many images (files or directories) to
safetensors / ``.pt`` / ``.npy`` files, resumably, skipping unreadable images, optionally split over
processes with ``torchrun --nproc_per_node N -m radio extract ...``. ``radio visualize`` saves the
first three PCA components of an image's dense features as a colour picture next to the image.
User documentation: ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from PIL import Image
from tqdm.auto import tqdm

from .download import WeightsUnavailableError
from .extraction import (RUN_SUMMARY, STORE_FORMATS, DirectoryStore, ExtractionSettings, ExtractionStats,
                         FeatureStore, SettingsMismatchError, SingleFileStore, extract_features)
from .factory import radio_model
from .images import IMAGE_EXTENSIONS, SizePolicy, find_images, load_image, resize_image
from .model import RADIOModel
from .outputs import Resolution
from .versions import DEFAULT_VERSION, VERSIONS
from .visualization import pca_rgb, side_by_side

__all__ = ["main", "build_parser"]

_logger = logging.getLogger(__name__)

#: Exit status when the run cannot start or finish (bad arguments, no weights, bad checkpoint).
EXIT_ERROR = 1
#: How long a process waits for the others at the final gather (ranks may finish far apart).
DIST_TIMEOUT = datetime.timedelta(hours=24)
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CLIError(Exception):
    """A problem the user can fix; reported as one message, without a traceback."""


# ------------------------------------------------------------------------------------------------
# Logging


class _TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write`` so that they do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging kill the run
            self.handleError(record)


class _Formatter(logging.Formatter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
        return f"{self.prefix}{level}{record.getMessage()}"


def _setup_logging(verbosity: int, rank: int, world_size: int) -> None:
    """Send the ``radio`` loggers' records to stderr (through tqdm), rank 0 at ``verbosity``."""
    logger = logging.getLogger("radio")
    for handler in list(logger.handlers):
        if isinstance(handler, _TqdmHandler):
            logger.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter(f"radio[{rank}]: " if world_size > 1 else "radio: "))
    logger.addHandler(handler)
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logger.setLevel(level if rank == 0 else max(level, logging.WARNING))


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    """Undo :func:`_setup_logging` on exit, so that calling :func:`main` in-process leaves no trace."""
    logger = logging.getLogger("radio")
    handlers, level = list(logger.handlers), logger.level
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------------
# Shared argument handling


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_model_args(p: argparse.ArgumentParser, multi_adaptor: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--version", default="", metavar="V",
                   help=f"release name (default: {DEFAULT_VERSION}; see `radio versions`) or the path of a "
                        "local checkpoint file")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="local checkpoint file to load instead of downloading; --version may still name its "
                        "release (for the preferred resolution)")
    if multi_adaptor:
        g.add_argument("--adaptor", action="append", default=[], metavar="NAME",
                       help="also store this teacher adaptor's outputs (repeatable, or comma-separated)")
    else:
        g.add_argument("--adaptor", default=None, metavar="NAME",
                       help="show this teacher adaptor's features instead of the backbone's")
    g.add_argument("--vitdet-window-size", type=int, default=None, metavar="N",
                   help="ViTDet windowed attention with N x N patch windows (sizes become multiples of "
                        "patch_size * N)")
    g.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu; under torchrun each process "
                        "uses cuda:LOCAL_RANK)")
    g.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    g.add_argument("--resolution", nargs="+", default=["preferred"], metavar="R",
                   help="'preferred' (default: the model's preferred pixel budget, aspect ratio kept), "
                        "'native' (each image's own size), or H W (every image resized to H x W)")
    v = p.add_argument_group("output")
    v.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                   help="only warnings and errors")
    v.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, help="debug messages")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_resolution(values: Sequence[str]) -> Tuple[str, Optional[Resolution]]:
    if len(values) == 1 and values[0] in ("preferred", "native"):
        return values[0], None
    try:
        sides = [int(v) for v in values]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < 1:
        raise CLIError(f"--resolution takes 'preferred', 'native' or two positive integers H W, "
                       f"got {' '.join(values)!r}.")
    return "fixed", Resolution(*sides)


def _split_resolution(values: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split the greedy ``--resolution`` values into the resolution and inputs that followed it.

    ``radio extract --resolution 512 512 images/`` gives ``(['512', '512'], ['images/'])``.
    """
    if values and values[0] in ("preferred", "native"):
        return list(values[:1]), list(values[1:])
    n = 0
    while n < min(2, len(values)) and values[n].isdigit():
        n += 1
    n = max(n, 1)  # a bad first value is reported by _parse_resolution
    return list(values[:n]), list(values[n:])


def _size_policy(values: Sequence[str], model: RADIOModel) -> SizePolicy:
    mode, size = _parse_resolution(values)
    step = model.min_resolution_step
    if mode == "preferred":
        if model.preferred_resolution is None:
            _logger.info("This checkpoint file has no preferred resolution (pass --version with its release "
                         "name to get it); using --resolution native.")
            mode = "native"
        else:
            size = Resolution(*model.preferred_resolution)
    try:
        return SizePolicy(mode, step, size, max_side=model.max_resolution)  # type: ignore[arg-type]
    except ValueError as e:
        raise CLIError(str(e)) from None


def _adaptor_names(values: Sequence[str]) -> List[str]:
    names: List[str] = []
    for v in values:
        for n in v.split(","):
            n = n.strip()
            if n and n not in names:
                names.append(n)
    return names


def _load_model(args: argparse.Namespace, adaptors: Sequence[str], device: torch.device) -> RADIOModel:
    """``radio_model`` with the CLI's arguments; loading problems become :class:`CLIError`."""
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise CLIError(f"Checkpoint file not found: {args.checkpoint}")
    try:
        model = radio_model(version=args.version, progress=not args.no_progress, adaptor_names=list(adaptors) or None,
                            vitdet_window_size=args.vitdet_window_size, checkpoint_path=args.checkpoint)
    except WeightsUnavailableError as e:
        raise CLIError(f"{e}\nWith a local copy: radio {args.command} ... --checkpoint /path/to/file.pth.tar "
                       "[--version <its release name>]") from None
    except (ValueError, FileNotFoundError, NotImplementedError, ImportError) as e:
        # CheckpointError / UnsafeCheckpointError / unknown versions and adaptors are ValueErrors
        raise CLIError(str(e)) from None
    return model.to(device)


def _version_label(args: argparse.Namespace, model: RADIOModel) -> str:
    """The release name, or the absolute path of the checkpoint file that was loaded."""
    if model.version:
        return model.version
    return os.path.abspath(args.checkpoint or args.version)


# ------------------------------------------------------------------------------------------------
# radio extract


def _dist_env() -> Tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _init_distributed(device: torch.device, world_size: int, local_rank: int) -> torch.device:
    """Join the torchrun process group (nccl on CUDA, gloo otherwise); return this process's device."""
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=DIST_TIMEOUT)
    _logger.debug("joined a %s process group of %d", backend, world_size)
    return device


def _make_store(args: argparse.Namespace) -> FeatureStore:
    out = Path(args.out)
    if out.suffix.lower() in (".safetensors", ".pt") and not out.is_dir():
        fmt = "safetensors" if out.suffix.lower() == ".safetensors" else "pt"
        if args.format not in (None, fmt):
            raise CLIError(f"--out {out} is a .{fmt} file but --format is {args.format}; write to a directory "
                           f"to use --format {args.format}.")
        return SingleFileStore(out, overwrite=args.overwrite)
    fmt = args.format or "safetensors"
    if fmt == "npy" and args.save_dtype == "bfloat16":
        raise CLIError("--format npy cannot store bfloat16; use --save-dtype float16 or float32.")
    return DirectoryStore(out, fmt)


def _merge_stats(all_stats: Sequence[ExtractionStats]) -> Dict[str, Any]:
    failed = sorted((f for s in all_stats for f in s.failed), key=lambda f: f[0])
    return {
        "total": sum(s.assigned for s in all_stats),
        "processed": sum(s.processed for s in all_stats),
        "skipped": sum(s.skipped for s in all_stats),
        "failed": [{"name": n, "source": src, "error": err} for n, src, err in failed],
        "ranks": [{"rank": s.rank, "assigned": s.assigned, "processed": s.processed, "skipped": s.skipped,
                   "failed": len(s.failed)} for s in sorted(all_stats, key=lambda s: s.rank)],
    }


def _report(summary: Dict[str, Any], out: Path) -> None:
    failed = summary["failed"]
    _logger.info("Done: %d image(s): %d extracted, %d already done, %d unreadable -> %s",
                 summary["total"], summary["processed"], summary["skipped"], len(failed), out)
    for f in failed[:20]:
        _logger.warning("unreadable image skipped: %s (%s)", f["source"], f["error"])
    if len(failed) > 20:
        _logger.warning("... and %d more unreadable image(s)", len(failed) - 20)


def cmd_extract(args: argparse.Namespace) -> int:
    """``radio extract``: see :func:`build_parser` and ``docs/cli.md``."""
    rank, world_size, local_rank = _dist_env()
    _setup_logging(args.verbosity, rank, world_size)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    device = torch.device(args.device or _default_device())
    distributed = world_size > 1
    if distributed:
        device = _init_distributed(device, world_size, local_rank)
    try:
        try:
            records = find_images(args.inputs)
        except FileNotFoundError as e:
            raise CLIError(str(e)) from None
        if not records:
            raise CLIError(f"No images found in {' '.join(args.inputs)} (looked for files ending in "
                           f"{', '.join(IMAGE_EXTENSIONS)}).")
        store = _make_store(args)
        adaptors = _adaptor_names(args.adaptor)
        model = _load_model(args, adaptors, device)
        policy = _size_policy(args.resolution, model)
        version = _version_label(args, model)
        settings = ExtractionSettings(
            version=version, checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else "",
            adaptors=tuple(adaptors), resolution=policy.describe(), feature_fmt=args.feature_fmt,
            save_dtype=args.save_dtype, summary_only=args.summary_only, bf16=args.bf16,
            vitdet_window_size=args.vitdet_window_size,
            format=store.fmt,
        )
        try:
            store.prepare(settings, args.overwrite, is_main=rank == 0)
        except SettingsMismatchError as e:
            raise CLIError(str(e)) from None
        shard = records[rank::world_size]  # every image belongs to exactly one process
        _logger.info("%d image(s), model %s on %s, resize: %s%s", len(records), version, device,
                     policy.describe(), f", {world_size} processes" if distributed else "")
        base = {"version": version, "checkpoint": settings.checkpoint, "adaptors": list(adaptors),
                "resolution": settings.resolution}
        stats = extract_features(
            model, shard, store, policy, overwrite=args.overwrite,
            batch_size=args.batch_size, device=device, feature_fmt=args.feature_fmt, bf16=args.bf16,
            save_dtype=SAVE_DTYPES[args.save_dtype], summary_only=args.summary_only, workers=args.workers,
            progress=not args.no_progress and rank == 0, base_metadata=base, rank=rank, world_size=world_size,
        )
        all_stats: List[ExtractionStats] = [stats]
        if distributed:
            gathered: List[Optional[ExtractionStats]] = [None] * world_size
            dist.all_gather_object(gathered, stats)
            all_stats = [s for s in gathered if s is not None]
        if rank == 0:
            store.finalize()
            summary = _merge_stats(all_stats)
            if isinstance(store, DirectoryStore):
                summary["settings"] = settings.to_json()
                (store.root / RUN_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
            _report(summary, Path(args.out))
        if distributed:
            dist.barrier()
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------------
# radio visualize


def _picture_paths(names: Sequence[str], out: Path) -> List[Path]:
    if len(names) == 1 and out.suffix.lower() == ".png" and not out.is_dir():
        return [out]
    stems = [str(Path(n).with_suffix("")) + "_pca.png" for n in names]
    if len(set(stems)) != len(stems):  # a.jpg and a.png: keep the suffix in the name
        stems = [n + "_pca.png" for n in names]
    return [out / s for s in stems]


def cmd_visualize(args: argparse.Namespace) -> int:
    """``radio visualize``: see :func:`build_parser` and ``docs/cli.md``."""
    _setup_logging(args.verbosity, 0, 1)
    device = torch.device(args.device or _default_device())
    try:
        records = find_images(args.inputs)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    if not records:
        raise CLIError(f"No images found in {' '.join(args.inputs)}.")
    adaptors = [args.adaptor] if args.adaptor else []
    model = _load_model(args, adaptors, device)
    policy = _size_policy(args.resolution, model)
    head = args.adaptor or "backbone"
    failed = 0
    for rec, dest in zip(records, _picture_paths([r.name for r in records], Path(args.out))):
        try:
            image = load_image(rec.path)
        except Exception as e:  # report and go on with the next image
            _logger.warning("Skipping %s: cannot read the image (%s: %s)", rec.path, type(e).__name__, e)
            failed += 1
            continue
        size = policy.target(*image.shape[-2:])
        x = resize_image(image, size).unsqueeze(0).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(x, feature_fmt="NCHW")
        features = (out[head] if isinstance(out, dict) else out).features[0].float().cpu()
        original = Image.fromarray(image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        dest.parent.mkdir(parents=True, exist_ok=True)
        side_by_side(original, pca_rgb(features)).save(dest)
        _logger.info("%s -> %s (input %dx%d, %s features %dx%d)", rec.path, dest, size.height, size.width, head,
                     features.shape[-2], features.shape[-1])
    return EXIT_ERROR if failed else 0


# ------------------------------------------------------------------------------------------------
# radio versions


def cmd_versions(args: argparse.Namespace) -> int:
    """``radio versions``: the release names, one per line (the default marked with ``*``)."""
    for name, v in VERSIONS.items():
        mark = "*" if name == DEFAULT_VERSION else " "
        res = f"{v.preferred_resolution.height}x{v.preferred_resolution.width}"
        sys.stdout.write(f"{mark} {name:<20} patch {v.patch_size:<3} preferred {res:<8} {v.license}\n")
    return 0


# ------------------------------------------------------------------------------------------------
# Parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``radio`` argument parser (subcommands ``extract``, ``visualize``, ``versions``)."""
    parser = argparse.ArgumentParser(
        prog="radio", description="RADIO vision foundation models: feature extraction and visualization.",
        epilog="Run `radio <command> --help` for the options of a command. Documentation: docs/cli.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True

    ext = sub.add_parser(
        "extract", help="write summary and dense features of images to files",
        description="Extract RADIO summary and dense features of images (files or directories, scanned "
                    "recursively) and write them to safetensors, .pt or .npy files, one per image mirroring "
                    "the input tree (or all in one file). Images of each input size are batched together. A "
                    "rerun resumes: finished images are skipped. Unreadable images are reported and "
                    "skipped. Split the work over processes with `torchrun --nproc_per_node N -m radio "
                    "extract ...`.",
    )
    ext.add_argument("inputs", nargs="*", metavar="IMAGES_OR_DIR", help="image files and/or directories")
    ext.add_argument("--out", default="radio_features", metavar="FILE_OR_DIR",
                     help="output directory (default: radio_features), or one .safetensors / .pt file")
    ext.add_argument("--format", choices=STORE_FORMATS, default=None,
                     help="file format in an output directory (default: safetensors)")
    ext.add_argument("--feature-fmt", choices=("NLC", "NCHW"), default="NLC",
                     help="layout of the dense features: NLC = (h*w, D) (default), NCHW = (D, h, w)")
    ext.add_argument("--summary-only", action="store_true", help="store only the summary vectors")
    ext.add_argument("--save-dtype", choices=tuple(SAVE_DTYPES), default="float32",
                     help="dtype of the stored tensors (default: float32)")
    ext.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default: 16)")
    ext.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                     help="image loading processes per model process (default: min(4, CPUs); 0 = none)")
    ext.add_argument("--overwrite", action="store_true",
                     help="recompute every image even if its output exists (and accept changed settings)")
    _add_model_args(ext, multi_adaptor=True)
    ext.set_defaults(func=cmd_extract)

    vis = sub.add_parser(
        "visualize", help="save PCA pictures of the dense features",
        description="Show the first three principal components of an image's dense features as an RGB "
                    "picture next to the image, saved as PNG (the picture is 2W x H for a W x H image).",
    )
    vis.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files and/or directories")
    vis.add_argument("--out", default=".", metavar="PNG_OR_DIR",
                     help="output .png (one image) or directory (default: the current directory; pictures "
                          "are named <image name>_pca.png)")
    _add_model_args(vis, multi_adaptor=False)
    vis.set_defaults(func=cmd_visualize)

    ver = sub.add_parser("versions", help="list the released versions")
    ver.set_defaults(func=cmd_versions)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``radio`` command line; returns the exit status (0: success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "resolution"):
        args.resolution, extra = _split_resolution(args.resolution)
        args.inputs = list(args.inputs) + extra
        if not args.inputs:
            parser.error(f"{args.command}: no image given (the first argument: image files or directories)")
    with _restored_logging():
        try:
            return args.func(args)
        except CLIError as e:
            if not any(isinstance(h, _TqdmHandler) for h in logging.getLogger("radio").handlers):
                _setup_logging(0, 0, 1)
            _logger.error("%s", e)
            return EXIT_ERROR
        except KeyboardInterrupt:
            _logger.error("interrupted; rerun the same command to resume")
            return 130
