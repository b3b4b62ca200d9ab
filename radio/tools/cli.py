"""The ``radio`` command line: ``extract``, ``visualize``, ``verify``, ``export`` and ``versions``.

``radio extract`` writes the summary and dense features of many images (files or directories) to
safetensors / ``.pt`` / ``.npy`` files, resumably, skipping unreadable images, optionally split over
processes with ``torchrun --nproc_per_node N -m radio extract ...``. ``radio visualize`` saves the
first three PCA components of an image's dense features as a colour picture beside the image, one
PNG per image written to ``--out``.
``radio verify`` checks a checkpoint file (published SHA-256, finite weights). ``radio export``
converts a model to pickle-free safetensors, the transformers-native layout or ONNX, optionally
checking parity. User documentation: ``docs/cli.md`` (export: ``docs/deployment.md``).

Start-up stays fast: this module imports no torch, timm or PIL at module level, so ``radio --help``,
``radio versions``, ``radio <command> --help`` and argument errors answer without loading them; each
command imports what it needs. Problems the user can fix end with one line on stderr,
``radio: error: <problem and fix>``, and exit status 2 (the command line is wrong) or 1 (the run
failed); ``--debug`` or ``RADIO_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..outputs import Resolution
from ..sources import Source, resolve_source
from ..versions import DEFAULT_VERSION, VERSIONS, RadioVersion, UnknownVersionError

if TYPE_CHECKING:  # imported for annotations only: each command imports what it runs
    import torch

    from ..model import RADIOModel
    from .images import SizePolicy
    from .stores import FeatureStore

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "RunError", "UsageError", "build_parser", "main"]

_logger = logging.getLogger(__name__)

#: Exit status when the run failed (weights unavailable, a checkpoint that does not load, a failed check).
EXIT_FAILURE = 1
#: Exit status when the command line is wrong (argparse's convention).
EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

#: ``radio extract --format`` choices (the same as :data:`radio.tools.stores.STORE_FORMATS`, kept
#: here so that building the parser imports no torch).
STORE_FORMATS = ("safetensors", "pt", "npy")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
SINGLE_FILE_SUFFIXES = (".safetensors", ".pt")
#: ``radio extract --max-tokens`` default (the same as :data:`radio.tools.extraction.DEFAULT_MAX_TOKENS`,
#: kept here so that building the parser imports no torch).
DEFAULT_MAX_TOKENS = 16384
#: ``radio export --opset``: the lowest and the default ONNX opset (the same as
#: :data:`radio.export.onnx_export.MIN_OPSET` / ``DEFAULT_OPSET``, kept here so that checking the
#: flag imports no torch).
MIN_OPSET = 17
DEFAULT_OPSET = 18


class UsageError(Exception):
    """The command line is wrong (a bad flag value, a missing input); exit status 2."""


class RunError(Exception):
    """The run cannot start or finish for a reason outside the command line; exit status 1."""


# Exception type -> exit status, checked in order (subclasses before their bases). Types are named by
# module so that the table imports nothing: an exception of a module that was never imported cannot
# have been raised.
_ERROR_STATUS: Tuple[Tuple[str, str, int], ...] = (
    (__name__, "UsageError", EXIT_USAGE),
    (__name__, "RunError", EXIT_FAILURE),
    ("radio.tools.distributed", "DeviceError", EXIT_USAGE),
    ("radio.versions", "UnknownVersionError", EXIT_USAGE),
    ("radio.download", "WeightsUnavailableError", EXIT_FAILURE),
    ("radio.checkpoint", "CheckpointError", EXIT_FAILURE),
    ("radio.tools.stores", "SettingsMismatchError", EXIT_FAILURE),
    ("builtins", "FileNotFoundError", EXIT_USAGE),
    ("builtins", "PermissionError", EXIT_FAILURE),
    ("builtins", "NotImplementedError", EXIT_FAILURE),
    ("builtins", "ValueError", EXIT_FAILURE),
)


def exit_status(error: BaseException) -> Optional[int]:
    """The exit status for a user-facing error, or ``None`` for an unexpected one (a bug: traceback)."""
    for module, name, status in _ERROR_STATUS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return status
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


# ------------------------------------------------------------------------------------------------
# Logging


class _TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write`` so that they do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

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


def _setup_logging(verbosity: int, rank: int = 0, world_size: int = 1) -> None:
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
# Checking the command line (no torch needed)


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
        raise UsageError(f"--resolution takes 'preferred', 'native' or two positive integers H W, "
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


def _adaptor_names(values: Sequence[str]) -> List[str]:
    names: List[str] = []
    for v in values:
        for n in v.split(","):
            n = n.strip()
            if n and n not in names:
                names.append(n)
    return names


def _unknown_version(name: str) -> UsageError:
    return UsageError(f"--version {name}: no such release (known: {', '.join(VERSIONS)}; see `radio versions`). "
                      "For a local checkpoint file use --checkpoint FILE [--version RELEASE].")


def _release(name: str) -> RadioVersion:
    try:
        return VERSIONS[name]
    except KeyError:
        raise _unknown_version(name) from None


def _model_source(args: argparse.Namespace) -> Source:
    """The release, repository id and/or local file named by ``--version`` / ``--checkpoint``, checked up front.

    Returns:
        A :class:`radio.sources.Source`: ``path`` is ``None`` when the weights must be resolved (cache
        or download); ``release`` is ``None`` for a bare file.
    """
    version = args.version or ""
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise UsageError(f"--checkpoint {args.checkpoint} {what}; pass a checkpoint file (.pth.tar).")
        if version and version not in VERSIONS and Path(version).is_file():
            raise UsageError("--version names the release of the --checkpoint file (see `radio versions`), "
                             f"not a second file; got {version}.")
    try:
        source = resolve_source(version, args.checkpoint)
    except UnknownVersionError:
        raise _unknown_version(version) from None
    except FileNotFoundError:
        raise UsageError(f"--version {version}: no such file. Pass a release name (see `radio versions`) "
                         "or an existing checkpoint file with --checkpoint FILE.") from None
    window = args.vitdet_window_size
    if window is not None:
        if window < 1:
            raise UsageError(f"--vitdet-window-size must be a positive number of patches, got {window}.")
        if source.release is not None and not source.release.supports_vitdet:
            raise UsageError(f"--vitdet-window-size: {source.release.name} does not support ViTDet windowed "
                             "attention; drop the flag or pick another --version.")
    return source


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_out(out: Path, file_suffixes: Sequence[str], what: str) -> None:
    """Raise :class:`UsageError` unless ``--out`` can be written: a directory, or a file ending in
    one of ``file_suffixes``, whose nearest existing ancestor is a writable directory."""
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"--out {out}: the directory is not writable; choose another --out.")
        return
    if out.exists():
        if out.suffix.lower() not in file_suffixes:
            raise UsageError(f"--out {out} is an existing file; pass a directory or {what}.")
        if not os.access(out, os.W_OK):
            raise UsageError(f"--out {out}: the file is not writable; choose another --out.")
        return
    parent = _nearest_existing(out.parent)
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a directory; choose another --out.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot create it, {parent} is not writable; choose another --out.")


def _check_count(value: int, flag: str, minimum: int) -> None:
    if value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}.")


# ------------------------------------------------------------------------------------------------
# Loading the model (imports torch)


def _device(args: argparse.Namespace) -> "torch.device":
    from .distributed import DeviceError, resolve_device, torchrun_env

    env = torchrun_env()
    try:
        return resolve_device(args.device, env.local_rank, env.distributed)
    except DeviceError as e:
        raise UsageError(f"--device {args.device}: {e}") from None


#: Messages of the Python API in its argument names -> the same in the command's flags (regex, replacement).
_CLI_WORDS: Tuple[Tuple[str, Any], ...] = (
    (r"Unknown adaptor '([^']*)': this checkpoint has the teachers \[([^\]]*)\]\. "
     r"Pass one of these names in `adaptor_names`\.",
     lambda m: f"--adaptor {m[1]}: not in this checkpoint; it has {m[2].replace(chr(39), '') or 'no adaptors'}."),
    (r"pass dynamic=False and example_size=\(H, W\) \(command line: --fixed-size HxW\)", "pass --fixed-size HxW"),
    (r"\bexample_size=(\d+)x(\d+)", r"--fixed-size \1x\2"),
    (r"\buse e\.g\. (\d+)x(\d+)", r"use e.g. --fixed-size \1x\2"),
    (r"\bopset=(\S+) ", r"--opset \1 "),
    (r"\buse opset >= (\d+)", r"use --opset \1 or higher"),
    (r"Pass one of these names in `adaptor_names`", "Pass one of these names to --adaptor"),
    (r"\badaptor_names lists", "--adaptor lists"),
    (r"Pass vitdet_window_size=None", "Drop --vitdet-window-size"),
    (r"\bpass vitdet_window_size=None", "drop --vitdet-window-size"),
    (r"\bvitdet_window_size=(\d+)", r"--vitdet-window-size \1"),
    (r"\bvitdet_window_size\b", "--vitdet-window-size"),
    (r"\(pass drop_unsupported=True to export without it\)", "(pass --drop-unsupported to export without it)"),
    (r"\bpass drop_unsupported=True", "pass --drop-unsupported"),
    (r"Export the remote-code layout \(safetensors\) instead", "Use --to safetensors instead"),
)


def _in_cli_words(error: BaseException) -> Tuple[str, bool]:
    """``error``'s message with the Python argument names replaced by the command's flags; whether any was."""
    import re

    text, changed = str(error), False
    for pattern, flag in _CLI_WORDS:
        text, n = re.subn(pattern, flag, text)
        changed = changed or n > 0
    return text, changed


def _local_hint(args: argparse.Namespace, what: str, release: Optional[RadioVersion] = None) -> str:
    """How to run the same command on a local copy (``what``: FILE or DIR)."""
    if args.command == "export":
        return f"`radio export {what} --to {args.to} {args.out}`"
    if release is None:
        return f"`radio {args.command} ... --version {what}`"
    return f"`radio {args.command} ... --checkpoint {what} --version {release.name}`"


@contextlib.contextmanager
def _loading(args: argparse.Namespace, source: Source) -> Iterator[None]:
    """Loading a model in the command's words.

    Unavailable weights (offline, nothing cached) become :class:`RunError` with the fix (download the
    file elsewhere, pass it as a local file); a ``ValueError`` about an argument the user gave
    (``--adaptor``, ``--vitdet-window-size``, ...) becomes :class:`UsageError` in flag names.
    """
    from ..download import WeightsUnavailableError

    try:
        yield
    except WeightsUnavailableError as e:
        first = str(e).splitlines()[0].strip()
        if source.repo_id is not None:
            fix = (f"copy the repository's config.json and *.safetensors files into a directory where there is "
                   f"network, then run {_local_hint(args, 'DIR')}.")
        elif source.release is not None:
            fix = (f"download {source.release.url} where there is network, then run "
                   f"{_local_hint(args, 'FILE', source.release)}.")
        else:
            raise
        raise RunError(f"{first} Fix: {fix}") from e
    except ValueError as e:
        text, about_flags = _in_cli_words(e)
        if about_flags and not isinstance(e, UnknownVersionError):
            raise UsageError(text) from e
        raise


def _radio_model_call(source: Source) -> Tuple[str, Optional[Path]]:
    """``(version, checkpoint_path)`` arguments of ``radio_model`` for ``source``."""
    if source.path is not None:
        return (source.release.name if source.release is not None else ""), source.path
    if source.repo_id is not None:
        return source.repo_id, None
    return source.release.name, None  # type: ignore[union-attr]


def _load_model(args: argparse.Namespace, source: Source, adaptors: Sequence[str], device: "torch.device",
                progress: bool) -> "RADIOModel":
    """``radio_model`` with the command line's choices; its errors in the command's words (:func:`_loading`)."""
    from ..factory import radio_model

    version, checkpoint = _radio_model_call(source)
    with _loading(args, source):
        model = radio_model(version, progress=progress, adaptor_names=list(adaptors) or None,
                            vitdet_window_size=getattr(args, "vitdet_window_size", None),
                            checkpoint_path=checkpoint)
    return model.to(device)


def _size_policy(values: Sequence[str], model: "RADIOModel") -> "SizePolicy":
    from .images import SizePolicy

    mode, size = _parse_resolution(values)
    step = model.min_resolution_step
    if mode == "preferred":
        if model.preferred_resolution is None:
            _logger.info("This checkpoint file has no preferred resolution (add --version with its release name "
                         "to get it); using --resolution native.")
            mode = "native"
        else:
            size = Resolution(*model.preferred_resolution)
    try:
        return SizePolicy(mode, step, size, max_side=model.max_resolution)  # type: ignore[arg-type]
    except ValueError as e:
        raise UsageError(f"--resolution {' '.join(values)}: {e}") from None


def _version_label(source: Source) -> str:
    """The release name, the repository id, or the absolute path of the checkpoint that was loaded."""
    if source.release is not None:
        return source.release.name
    if source.repo_id is not None:
        return source.repo_id
    return os.path.abspath(str(source.path))


def _find_images(inputs: Sequence[str]) -> List[Any]:
    from .images import IMAGE_EXTENSIONS, find_images

    try:
        records = find_images(inputs)
    except FileNotFoundError as e:
        raise UsageError(f"{e}; pass existing image files or directories.") from None
    if not records:
        raise UsageError(f"No images found in {' '.join(inputs)} (looked for files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)}).")
    return records


# ------------------------------------------------------------------------------------------------
# radio extract


def _make_store(args: argparse.Namespace) -> "FeatureStore":
    from .stores import DirectoryStore, SingleFileStore

    out = Path(args.out)
    if out.suffix.lower() in SINGLE_FILE_SUFFIXES and not out.is_dir():
        fmt = "safetensors" if out.suffix.lower() == ".safetensors" else "pt"
        if args.format not in (None, fmt):
            raise UsageError(f"--out {out} is a .{fmt} file but --format is {args.format}; write to a directory "
                             f"to use --format {args.format}.")
        return SingleFileStore(out, overwrite=args.overwrite)
    fmt = args.format or "safetensors"
    if fmt == "npy" and args.save_dtype == "bfloat16":
        raise UsageError("--format npy cannot store bfloat16; use --save-dtype float16 or float32.")
    return DirectoryStore(out, fmt)


def _merge_stats(all_stats: Sequence[Any]) -> Dict[str, Any]:
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
    # the command line first (no torch needed), then the rest
    _check_count(args.batch_size, "--batch-size", 1)
    _check_count(args.max_tokens, "--max-tokens", 1)
    _check_count(args.workers, "--workers", 0)
    _parse_resolution(args.resolution)
    source = _model_source(args)
    adaptors = _adaptor_names(args.adaptor)
    _check_out(Path(args.out), SINGLE_FILE_SUFFIXES, "a .safetensors or .pt file")

    from .distributed import torchrun_env

    env = torchrun_env()
    _setup_logging(args.verbosity, env.rank, env.world_size)
    records = _find_images(args.inputs)
    store = _make_store(args)
    _device(args)  # a bad --device is reported before any process group is joined

    import torch

    from .distributed import distributed_context, rank_zero_first
    from .extraction import extract_features
    from .stores import DirectoryStore, ExtractionSettings

    with distributed_context(args.device) as ctx:
        with rank_zero_first(ctx):  # rank 0 downloads (with a progress bar); the others then read the cache
            model = _load_model(args, source, adaptors, ctx.device, progress=not args.no_progress and ctx.is_main)
        policy = _size_policy(args.resolution, model)
        version = _version_label(source)
        settings = ExtractionSettings(
            version=version, checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else "",
            adaptors=tuple(adaptors), resolution=policy.describe(), feature_fmt=args.feature_fmt,
            save_dtype=args.save_dtype, summary_only=args.summary_only, bf16=args.bf16,
            vitdet_window_size=args.vitdet_window_size, format=store.fmt,
        )
        store.prepare(settings, args.overwrite, is_main=ctx.is_main)
        shard = records[ctx.rank::ctx.world_size]  # every image belongs to exactly one process
        _logger.info("%d image(s), model %s on %s, resize: %s%s", len(records), version, ctx.device,
                     policy.describe(), f", {ctx.world_size} processes" if ctx.distributed else "")
        base = {"version": version, "checkpoint": settings.checkpoint, "adaptors": list(adaptors),
                "resolution": settings.resolution}
        stats = extract_features(
            model, shard, store, policy, overwrite=args.overwrite, batch_size=args.batch_size,
            max_tokens=args.max_tokens, device=ctx.device, feature_fmt=args.feature_fmt, bf16=args.bf16,
            save_dtype=getattr(torch, args.save_dtype), summary_only=args.summary_only, workers=args.workers,
            progress=not args.no_progress and ctx.is_main, base_metadata=base, rank=ctx.rank,
            world_size=ctx.world_size,
        )
        all_stats = [s for s in ctx.all_gather_object(stats) if s is not None]
        if ctx.is_main:
            store.finalize()
            summary = _merge_stats(all_stats)
            if isinstance(store, DirectoryStore):
                summary["settings"] = settings.to_json()
                store.write_summary(summary)
            _report(summary, Path(args.out))
        ctx.barrier()
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
    _parse_resolution(args.resolution)
    source = _model_source(args)
    adaptors = _adaptor_names([args.adaptor] if args.adaptor else [])
    if len(adaptors) > 1:
        raise UsageError(f"--adaptor {args.adaptor}: visualize shows one adaptor's features; pass one name.")
    _check_out(Path(args.out), (".png",), "a .png file")
    _setup_logging(args.verbosity)
    records = _find_images(args.inputs)
    if len(records) > 1 and Path(args.out).suffix.lower() == ".png" and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is one picture but {len(records)} images were given; pass a directory.")
    device = _device(args)

    import torch
    from PIL import Image

    from .images import load_image, resize_image
    from .visualization import pca_rgb, side_by_side

    model = _load_model(args, source, adaptors, device, progress=not args.no_progress)
    policy = _size_policy(args.resolution, model)
    head = adaptors[0] if adaptors else "backbone"
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
    return EXIT_FAILURE if failed else 0


# ------------------------------------------------------------------------------------------------
# radio verify


def cmd_verify(args: argparse.Namespace) -> int:
    """``radio verify FILE``: print what was checked; exit status 1 when a check fails."""
    _setup_logging(args.verbosity)
    path = Path(args.file)
    if not path.exists():
        raise UsageError(f"{args.file}: no such file; pass a checkpoint file.")
    release: Optional[RadioVersion] = None
    if args.version:
        release = _release(args.version)
    else:
        release = next((v for v in VERSIONS.values() if v.filename == path.name), None)
        if release is not None:
            _logger.info("Checking against the release %s (from the file name; --version overrides).", release.name)

    from ..integrity import verify_checkpoint

    report = verify_checkpoint(path, release)
    sys.stdout.write("".join(line + "\n" for line in report.describe()))
    return 0 if report.ok else EXIT_FAILURE


# ------------------------------------------------------------------------------------------------
# radio export

EXPORT_TARGETS = ("safetensors", "transformers", "onnx")


def _print_errors(errors: Dict[str, float], tol: float) -> bool:
    """Print the parity check's relative errors; whether all are within ``tol``."""
    worst = max(errors.values(), default=0.0)
    for key, err in sorted(errors.items()):
        sys.stdout.write(f"  {key:<40} relative error {err:.2e}\n")
    ok = worst <= tol
    sys.stdout.write(f"parity: {'ok' if ok else 'FAILED'} (largest relative error {worst:.2e}, limit {tol:.0e})\n")
    return ok


def _parse_fixed_size(text: str) -> Tuple[int, int]:
    """``--fixed-size HxW`` -> ``(H, W)``."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"--fixed-size expects HxW in pixels, e.g. --fixed-size 512x512; got {text!r}")
    return int(parts[0]), int(parts[1])


def _export_source(src: str) -> Source:
    """``radio export``'s SRC, classified by :func:`radio.sources.resolve_source` (no network, no torch)."""
    try:
        return resolve_source(src)
    except (UnknownVersionError, FileNotFoundError):
        raise UsageError(f"SRC {src!r} is neither a release name (see `radio versions`), a Hugging Face repository "
                         "id, nor an existing checkpoint file or directory") from None


def _export_onnx_file(args: argparse.Namespace, source: Source, out: Path, adaptors: List[str],
                      fixed: Optional[Tuple[int, int]], opset: int) -> int:
    """``radio export SRC --to onnx OUT``: load, export (dynamic sizes, or one fixed size), optionally verify."""
    from ..export import onnx_export

    model = _load_model(args, source, adaptors, _cpu(), progress=not args.no_progress)
    if fixed is None and not onnx_export.supports_dynamic_size(model):
        fixed = onnx_export.default_fixed_size(model)
        if fixed is None:
            raise UsageError(
                "E-RADIO is exported at one fixed size (its attention window is chosen from the input size) and "
                f"this checkpoint states no preferred resolution: pass --fixed-size HxW (multiples of "
                f"{model.min_resolution_step}, e.g. --fixed-size 512x512)")
        _logger.info("E-RADIO: exporting at the preferred resolution %dx%d (--fixed-size HxW for another size)",
                     *fixed)
    try:
        info = onnx_export.export_onnx(model, out, adaptor_names=adaptors, opset=opset, dtype=args.dtype or "float32",
                                       external_preprocessing=args.external_preprocessing, example_size=fixed,
                                       dynamic=fixed is None)
    except ValueError as e:
        raise UsageError(_in_cli_words(e)[0]) from e
    sizes = "dynamic height and width" if info.dynamic else "fixed size {}x{}".format(*info.export_size)
    window = f", E-RADIO attention window {info.window_size}" if info.window_size is not None else ""
    sys.stdout.write(f"wrote {info.path} (opset {info.opset}, {info.dtype}, {sizes}{window}, any batch; input: "
                     f"{info.input_name}; outputs: {', '.join(info.output_names)})\n")
    if not args.verify:
        return 0
    tol = onnx_export.FP32_TOLERANCE if info.dtype == "float32" else onnx_export.FP16_TOLERANCE
    try:
        errors = onnx_export.verify_onnx(model, info.path, tol=float("inf"))  # measure all; judged below
    except onnx_export.OnnxVerificationError as e:  # an output of the wrong shape
        raise RunError(f"--verify failed: {e}") from e
    return 0 if _print_errors(errors, tol) else EXIT_FAILURE


def _cpu() -> "torch.device":
    import torch

    return torch.device("cpu")


def cmd_export(args: argparse.Namespace) -> int:
    """``radio export SRC --to safetensors|transformers|onnx OUT``: convert a model, optionally check parity."""
    _setup_logging(args.verbosity)
    # the command line first (no torch needed), then the rest
    source = _export_source(args.src)
    out = Path(args.out)
    if args.to == "onnx":
        if out.is_dir():
            raise UsageError(f"OUT {out} is a directory; --to onnx writes one file, e.g. {out / 'radio.onnx'}")
    elif out.is_file():
        raise UsageError(f"OUT {out} is a file; --to {args.to} writes a directory")
    adaptors = _adaptor_names(args.adaptor)
    if args.to != "onnx" and adaptors:
        raise UsageError(f"--adaptor applies to --to onnx; --to {args.to} exports "
                         + ("every adaptor" if args.to == "safetensors" else "the backbone only"))
    if args.to != "onnx":
        for flag, value in (("--opset", args.opset), ("--fixed-size", args.fixed_size),
                            ("--vitdet-window-size", args.vitdet_window_size), ("--dtype", args.dtype),
                            ("--external-preprocessing", args.external_preprocessing or None)):
            if value is not None:
                raise UsageError(f"{flag} applies to --to onnx; --to {args.to} stores the weights as they are "
                                 f"(drop {flag})")
    if args.drop_unsupported and args.to != "transformers":
        raise UsageError(f"--drop-unsupported applies to --to transformers; --to {args.to} keeps every adaptor and "
                         "normalizer (drop --drop-unsupported)")
    if args.to == "onnx":
        fixed = _parse_fixed_size(args.fixed_size) if args.fixed_size is not None else None
        opset = DEFAULT_OPSET if args.opset is None else args.opset
        if opset < MIN_OPSET:
            raise UsageError(f"--opset {opset} is too old: the graph needs LayerNormalization (opset 17); use "
                             f"--opset {MIN_OPSET} or higher (default {DEFAULT_OPSET})")
        if args.vitdet_window_size is not None and args.vitdet_window_size < 1:
            raise UsageError(f"--vitdet-window-size must be a positive number of patches, got "
                             f"{args.vitdet_window_size}.")
        return _export_onnx_file(args, source, out, adaptors, fixed, opset)
    if args.to == "safetensors":
        from ..export.safetensors_export import export_safetensors_from

        with _loading(args, source):
            path, errors = export_safetensors_from(args.src, out, verify=args.verify, progress=not args.no_progress)
        sys.stdout.write(f"wrote {path}\n")
        return 0 if not args.verify or _print_errors(errors, 1e-5) else EXIT_FAILURE
    from ..export.transformers_export import export_transformers, parity_tolerance, verify_transformers_export

    model = _load_model(args, source, (), _cpu(), progress=not args.no_progress)
    try:
        path = export_transformers(model, out, drop_unsupported=args.drop_unsupported)
    except ValueError as e:
        raise UsageError(_in_cli_words(e)[0]) from e
    sys.stdout.write(f"wrote {path}\n")
    if args.verify:
        return 0 if _print_errors(verify_transformers_export(model, path), parity_tolerance(model)) else EXIT_FAILURE
    return 0


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


def _common_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                   help="only warnings and errors")
    g.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, help="debug messages")
    g.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (also: environment RADIO_DEBUG=1)")
    return p


def _add_model_args(p: argparse.ArgumentParser, multi_adaptor: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--version", default="", metavar="NAME",
                   help=f"release name (default: {DEFAULT_VERSION}; see `radio versions`); with --checkpoint, the "
                        "release of that file")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="local checkpoint file to load instead of downloading; add --version with its release "
                        "name to keep the release's preferred resolution")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``radio`` argument parser (commands ``extract``, ``visualize``, ``verify``, ``export``, ``versions``)."""
    parser = argparse.ArgumentParser(
        prog="radio", description="RADIO vision foundation models: feature extraction (extract), PCA pictures "
                                  "(visualize), checkpoint checks (verify), conversion to safetensors, transformers "
                                  "or ONNX (export) and the release list (versions).",
        epilog="Run `radio <command> --help` for the options of a command. Documentation: docs/cli.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    common = _common_args()

    ext = sub.add_parser(
        "extract", parents=[common], help="write summary and dense features of images to files",
        description="Extract RADIO summary and dense features of images (files or directories, scanned "
                    "recursively) and write them to safetensors, .pt or .npy files, one per image mirroring "
                    "the input tree (or all in one file). Images of different sizes (--resolution native or "
                    "preferred) are packed into model calls of at most N tokens (--max-tokens N); with "
                    "--resolution H W, images are batched N at a time (--batch-size N). A rerun resumes: "
                    "finished images are skipped. Unreadable images are reported and "
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
    ext.add_argument("--save-dtype", choices=SAVE_DTYPES, default="float32",
                     help="dtype of the stored tensors (default: float32)")
    ext.add_argument("--batch-size", type=int, default=16, metavar="N",
                     help="images per equal-size batch: --resolution H W, or models that cannot pack "
                          "(E-RADIO) (default: 16)")
    ext.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                     help="token budget of one packed model call for images of different sizes (--resolution "
                          "native / preferred): each image counts its prefix tokens plus (H/patch)*(W/patch) "
                          f"patches; a larger image runs alone (default: {DEFAULT_MAX_TOKENS})")
    ext.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                     help="image loading processes per model process (default: min(4, CPUs); 0 = none)")
    ext.add_argument("--overwrite", action="store_true",
                     help="recompute every image even if its output exists (and accept changed settings)")
    _add_model_args(ext, multi_adaptor=True)
    ext.set_defaults(func=cmd_extract)

    vis = sub.add_parser(
        "visualize", parents=[common], help="save PCA pictures of the dense features",
        description="Show the first three principal components of an image's dense features as an RGB "
                    "picture next to the image, saved as PNG (the picture is 2W x H for a W x H image).",
    )
    vis.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files and/or directories")
    vis.add_argument("--out", default=".", metavar="PNG_OR_DIR",
                     help="output .png (one image) or directory (default: the current directory; pictures "
                          "are named <image name>_pca.png)")
    _add_model_args(vis, multi_adaptor=False)
    vis.set_defaults(func=cmd_visualize)

    ver = sub.add_parser(
        "verify", parents=[common], help="check a checkpoint file (published SHA-256, finite weights)",
        description="Check a checkpoint file: its SHA-256 against the release's published one (when the "
                    "release table has it) and that every weight is finite (no NaN or infinity). Prints "
                    "what was checked; exit status 1 when a check fails.",
    )
    ver.add_argument("file", metavar="FILE", help="the checkpoint file (or a directory of .safetensors files)")
    ver.add_argument("--version", default="", metavar="NAME",
                     help="the release the file should be (default: the release whose file name it has, if any)")
    ver.set_defaults(func=cmd_verify)

    exp = sub.add_parser(
        "export", parents=[common], help="convert a model to safetensors, transformers or ONNX",
        description="Convert a RADIO model. safetensors: a pickle-free Hugging Face directory (config.json + "
                    "model.safetensors, adaptors and normalizers included) that this package loads back. "
                    "transformers: a directory transformers.RadioModel.from_pretrained loads (backbone only). "
                    "onnx: one .onnx file with dynamic batch, height and width (ViTs), or a dynamic batch at "
                    "one fixed height and width (--fixed-size HxW; always for E-RADIO, whose attention window "
                    "depends on the input size: default its preferred resolution). --verify checks the "
                    "result against this package's outputs and prints the relative errors.",
    )
    exp.add_argument("src", metavar="SRC", help="release name, Hugging Face repo id, checkpoint file or directory")
    exp.add_argument("--to", required=True, choices=EXPORT_TARGETS, help="target format")
    exp.add_argument("out", metavar="OUT", help="output directory (safetensors, transformers) or .onnx file")
    exp.add_argument("--verify", action="store_true", help="check parity after writing; exit 1 if it fails")
    exp.add_argument("--adaptor", action="append", default=[], metavar="NAME",
                     help="onnx: also export this adaptor's outputs (repeatable, or comma-separated)")
    exp.add_argument("--dtype", choices=("float32", "float16"), default=None, help="onnx: weight dtype (default float32)")
    exp.add_argument("--external-preprocessing", action="store_true",
                     help="onnx: leave the input standardization out of the graph (inputs already standardized)")
    exp.add_argument("--opset", type=int, default=None, metavar="N",
                     help=f"onnx: ONNX opset, at least {MIN_OPSET} (default: {DEFAULT_OPSET})")
    exp.add_argument("--fixed-size", default=None, metavar="HxW",
                     help="onnx: export one fixed input size in pixels, e.g. 512x512 (the batch stays dynamic); "
                          "default: dynamic sizes for ViTs, the preferred resolution for E-RADIO (its attention "
                          "window is the one the model uses at that size)")
    exp.add_argument("--vitdet-window-size", type=int, default=None, metavar="N",
                     help="onnx: ViTDet windowed attention with N x N patch windows (sizes become multiples of "
                          "patch_size * N)")
    exp.add_argument("--drop-unsupported", action="store_true",
                     help="transformers: drop adaptors/normalizers that transformers' RadioModel cannot hold "
                          "(with a warning) instead of refusing")
    exp.add_argument("--no-progress", action="store_true", help="no progress bars")
    exp.set_defaults(func=cmd_export)

    vs = sub.add_parser("versions", help="list the released versions")
    vs.set_defaults(func=cmd_versions, debug=False)
    return parser


def _debug_requested(args: Optional[argparse.Namespace]) -> bool:
    env = os.environ.get("RADIO_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(getattr(args, "debug", False))


def _error(message: str) -> None:
    sys.stderr.write(f"radio: error: {message}\n")
    sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``radio`` command line; return the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when the run failed, 2 for a wrong command line (argparse errors exit
        through ``SystemExit(2)``), 130 after Ctrl-C.
    """
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
        except KeyboardInterrupt:
            if _debug_requested(args):
                raise
            hint = "; rerun the same command to resume" if args.command == "extract" else ""
            _error(f"interrupted{hint}")
            return EXIT_INTERRUPTED
        except Exception as e:
            status = exit_status(e)
            if status is None or _debug_requested(args):
                raise
            _error(_one_line(e))
            return status
