"""Throughput of an exported ONNX file on onnxruntime (CPU) against PyTorch eager, one run.

Writes a ViT-B/16 checkpoint of the official layout with random weights (``tests/ckpt_writer.py``,
``vit_base_patch16_224``: 12 blocks x 768, 128 x 128 position table as in the releases) to a
temporary directory, loads it with ``radio_model``, exports it once with dynamic sizes
(``radio.export.onnx_export.export_onnx``), checks the file at the benchmark sizes, then times
images per second at 224 and 512 px for batch 1 and 4, with the same number of threads on both
sides. Prints one table and the onnxruntime / torch ratio per line.

Usage::

    python benchmarks/onnx_benchmark.py                    # ViT-B/16, 224 and 512, batch 1 and 4
    python benchmarks/onnx_benchmark.py --threads 2 --repeat 5 --sizes 224 --batches 1
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]


def _ckpt_writer():
    """``tests/ckpt_writer.py`` by file path (test infrastructure; it does not import ``radio``)."""
    spec = importlib.util.spec_from_file_location("ckpt_writer", REPO / "tests" / "ckpt_writer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _images_per_second(run: Callable[[], object], batch: int, repeat: int, min_seconds: float) -> float:
    run()  # warm-up (allocations, ORT kernel selection)
    times: List[float] = []
    while len(times) < repeat or sum(times) < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return batch / sorted(times)[len(times) // 2]  # median


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="ckpt_writer architecture name")
    parser.add_argument("--embed-dim", type=int, default=768)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="keep timing until this much time")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="ONNX export dtype")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from radio import radio_model
    from radio.export.onnx_export import export_onnx, verify_onnx

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "vit_b16.pth.tar"
        t0 = time.perf_counter()
        _ckpt_writer().make_checkpoint(ckpt, model=args.model, embed_dim=args.embed_dim, depth=args.depth,
                                       num_heads=args.heads, cpe_max_size=2048, head_hidden=1024, head_out=768)
        model = radio_model(str(ckpt))
        print(f"checkpoint written and loaded in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        info = export_onnx(model, Path(tmp) / "vit_b16.onnx", dtype=args.dtype)
        size_mb = info.path.stat().st_size / 2**20
        print(f"exported in {time.perf_counter() - t0:.1f} s ({size_mb:.0f} MiB, opset {info.opset}, {args.dtype})")
        errors = verify_onnx(model, info.path, sizes=[(s, s) for s in args.sizes], batch=1,
                             tol=None if args.dtype == "float32" else float("inf"))
        print(f"verified at {args.sizes}: max relative error {max(errors.values()):.2e}")

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(info.path), options, providers=["CPUExecutionProvider"])

        print(f"\n{'size':>5} {'batch':>5} {'torch img/s':>12} {'onnxruntime img/s':>18} {'ratio ort/torch':>16}"
              f"   (torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads)")
        for size in args.sizes:
            for batch in args.batches:
                x = torch.rand(batch, 3, size, size)
                feed = {info.input_name: x.numpy()}

                def run_torch() -> object:
                    with torch.inference_mode():
                        return model(x)

                torch_ips = _images_per_second(run_torch, batch, args.repeat, args.min_seconds)
                ort_ips = _images_per_second(lambda: session.run(None, feed), batch, args.repeat, args.min_seconds)
                print(f"{size:>5} {batch:>5} {torch_ips:>12.2f} {ort_ips:>18.2f} {ort_ips / torch_ips:>15.2f}x")


if __name__ == "__main__":
    main()
