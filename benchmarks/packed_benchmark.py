"""Packed variable-resolution batches vs a per-image loop vs size-bucketed batches (CPU).

A ViT-B/16 official-layout checkpoint with random weights (tests/ckpt_writer.py::make_checkpoint)
runs a mixed set of images (sides 128-512 px in steps of 16, aspect ratios 1:2 to 2:1) three ways:

* ``loop``: ``model(img[None])`` per image;
* ``bucket``: images of equal size batched together, one ``model(x)`` per size;
* ``packed``: ``model.forward_packed(images)`` in chunks of at most ``--max-tokens`` tokens.

Each method runs in its own child process so that its peak resident memory is its own. Also
compares the per-segment attention of :func:`radio.packed.varlen_attention` with a block-diagonal
mask, and ``torch.compile`` on the dense and packed paths (a smaller model, fixed shapes).

Usage::

    python benchmarks/packed_benchmark.py --threads 2            # the full run
    python benchmarks/packed_benchmark.py --depth 2 --images 8   # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def mixed_sizes(n: int, seed: int = 0, lo: int = 128, hi: int = 512, step: int = 16) -> List[Tuple[int, int]]:
    """``n`` (H, W) sizes, sides in ``[lo, hi]`` multiples of ``step``, aspect ratio within 1:2..2:1."""
    rng = random.Random(seed)
    sides = list(range(lo, hi + 1, step))
    out = []
    while len(out) < n:
        h, w = rng.choice(sides), rng.choice(sides)
        if 0.5 <= h / w <= 2.0:
            out.append((h, w))
    return out


def make_images(sizes: List[Tuple[int, int]], seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def cpu_name() -> str:
    """The CPU model as Linux names it (the roofline below depends on it), or ``"unknown CPU"``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def write_checkpoint(path: str, depth: int) -> None:
    from ckpt_writer import make_checkpoint

    make_checkpoint(path, model="vit_base_patch16_224", embed_dim=768, depth=depth, num_heads=12,
                    cpe_max_size=512, teachers=[], storage_dtype=torch.float32)


def chunks_by_tokens(images: List[torch.Tensor], ps: int, prefix: int, max_tokens: int) -> List[List[torch.Tensor]]:
    """Consecutive groups of images whose tokens add up to at most ``max_tokens`` (one image at least)."""
    out, cur, used = [], [], 0
    for img in images:
        n = prefix + (img.shape[-2] // ps) * (img.shape[-1] // ps)
        if cur and used + n > max_tokens:
            out.append(cur)
            cur, used = [], 0
        cur.append(img)
        used += n
    if cur:
        out.append(cur)
    return out


def run_method(method: str, ckpt: str, n: int, repeats: int, max_tokens: int) -> Dict[str, float]:
    from radio import radio_model

    model = radio_model(ckpt)
    images = make_images(mixed_sizes(n))
    ps, prefix = model.patch_size, model.num_summary_tokens
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def once() -> None:
        if method == "loop":
            for img in images:
                model(img[None])
        elif method == "bucket":
            groups: Dict[Tuple[int, int], List[torch.Tensor]] = {}
            for img in images:
                groups.setdefault(tuple(img.shape[-2:]), []).append(img)
            for imgs in groups.values():
                model(torch.stack(imgs))
        elif method == "packed":
            for chunk in chunks_by_tokens(images, ps, prefix, max_tokens):
                model.forward_packed(chunk)
        else:
            raise ValueError(method)

    with torch.no_grad():
        once()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = min(times)
    return {"images_per_s": n / best, "seconds": best, "peak_rss_mib": peak / 1024,
            "delta_rss_mib": (peak - base_rss) / 1024,
            "buckets": len({tuple(i.shape[-2:]) for i in images})}


def block_diagonal_mask(segments, device=None) -> torch.Tensor:
    """Boolean ``(L, L)`` mask, true where query and key belong to the same segment (the alternative
    to per-segment attention that this benchmark compares against)."""
    ids = torch.repeat_interleave(torch.arange(len(segments), device=device),
                                  torch.tensor(segments.lengths, device=device))
    return ids[:, None] == ids[None, :]


def attention_comparison(n: int) -> Dict[str, float]:
    """Per-segment SDPA vs one SDPA with a block-diagonal mask, ViT-B head layout, the mixed set."""
    from radio.packed import make_segments, varlen_attention

    grids = [(h // 16, w // 16) for h, w in mixed_sizes(n)]
    seg = make_segments(grids, 8)
    length = seg.offsets[-1]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, length, 64, generator=g) for _ in range(3))
    res = {}

    def best(fn):
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            y = fn()
            ts.append(time.perf_counter() - t0)
        return min(ts), y

    res["per_segment_s"], a = best(lambda: varlen_attention(q, k, v, seg))
    try:
        mask = block_diagonal_mask(seg)
        res["block_mask_s"], b = best(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        res["max_abs_diff"] = (a - b).abs().max().item()
    except RuntimeError as e:  # out of memory for long sequences
        res["block_mask_error"] = str(e)[:80]
    res["tokens"] = length
    return res


def model_flops(sizes: List[Tuple[int, int]], depth: int, dim: int = 768, ps: int = 16, prefix: int = 8) -> float:
    """Multiply-add FLOPs (x2) of a ViT forward over ``sizes``: patch embedding, the four linear
    layers of each block (``24 D^2`` per token, MLP ratio 4) and the attention products (``4 N^2 D``)."""
    total = 0.0
    for h, w in sizes:
        n = prefix + (h // ps) * (w // ps)
        total += 2 * (n - prefix) * 3 * ps * ps * dim
        total += depth * (24 * n * dim * dim + 4 * n * n * dim)
    return total


def matmul_peak(dim: int = 768) -> Tuple[float, int]:
    """The best FLOP rate of this CPU on the model's MLP product (``(N, D) x (D, 4D)``) over row counts
    ``N`` from 64 to 16384, and the ``N`` that reaches it: an upper bound for any way of batching."""
    w = torch.randn(4 * dim, dim)
    best = (0.0, 0)
    for n in (64, 128, 256, 512, 1024, 2048, 4096, 16384):
        x = torch.randn(n, dim)
        torch.nn.functional.linear(x, w)
        reps = max(3, 200_000 // n)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        rate = 2 * n * dim * 4 * dim * reps / (time.perf_counter() - t0)
        best = max(best, (rate, n))
    return best


def compile_comparison(ckpt: str) -> Dict[str, float]:
    """``torch.compile`` speed-up on the dense path (one size) and the packed path (one fixed set)."""
    from radio import radio_model

    model = radio_model(ckpt)
    x = torch.rand(4, 3, 224, 224)
    imgs = make_images(mixed_sizes(4, seed=1))
    dense_c = torch.compile(model)
    packed_c = torch.compile(model.forward_packed)
    out = {}
    with torch.no_grad():
        for name, eager, compiled, arg in (("dense", model, dense_c, x),
                                           ("packed", model.forward_packed, packed_c, imgs)):
            t0 = time.perf_counter()
            compiled(arg)
            out[f"{name}_compile_s"] = time.perf_counter() - t0
            ts = {}
            for label, fn in (("eager", eager), ("compiled", compiled)):
                fn(arg)
                t0 = time.perf_counter()
                for _ in range(3):
                    fn(arg)
                ts[label] = (time.perf_counter() - t0) / 3
            out[f"{name}_speedup"] = ts["eager"] / ts["compiled"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--compile-depth", type=int, default=2, help="depth of the model for the torch.compile line (0: skip)")
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.method:
        if args.method == "compile":
            res = compile_comparison(args.ckpt)
        else:
            res = run_method(args.method, args.ckpt, args.images, args.repeats, args.max_tokens)
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "vitb16.pth.tar")
        write_checkpoint(ckpt, args.depth)
        sizes = mixed_sizes(args.images)
        print(f"ViT-B/16 random weights, depth {args.depth}, {args.images} images, torch {torch.__version__}, "
              f"{args.threads} threads of {cpu_name()}; total tokens {sum(8 + (h // 16) * (w // 16) for h, w in sizes)}")
        results = {}
        for method in ("loop", "bucket", "packed"):
            cmd = [sys.executable, __file__, "--method", method, "--ckpt", ckpt, "--images", str(args.images),
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--max-tokens", str(args.max_tokens)]
            results[method] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            r = results[method]
            print(f"{method:>7}: {r['images_per_s']:7.2f} images/s ({r['seconds']:.2f} s), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['delta_rss_mib']:.0f} MiB over the loaded model)")
        base = results["loop"]["images_per_s"]
        print(f"packed / loop = {results['packed']['images_per_s'] / base:.2f}x, "
              f"bucket / loop = {results['bucket']['images_per_s'] / base:.2f}x "
              f"({results['bucket']['buckets']} distinct sizes)")
        flops = model_flops(sizes, args.depth)
        peak, rows = matmul_peak()
        loop_rate = flops / results["loop"]["seconds"]
        print(f"roofline: the set is {flops / 1e12:.2f} TFLOP; the loop runs at {loop_rate / 1e9:.0f} GFLOP/s, "
              f"{100 * loop_rate / peak:.0f}% of this CPU's best matrix-product rate ({peak / 1e9:.0f} GFLOP/s, "
              f"at {rows} rows), so no batching of the same computation can exceed {peak / loop_rate:.2f}x the loop here")
        print("attention on the whole set (per segment vs block-diagonal mask):", attention_comparison(args.images))
        if args.compile_depth:
            small = os.path.join(d, "small.pth.tar")
            write_checkpoint(small, args.compile_depth)
            cmd = [sys.executable, __file__, "--method", "compile", "--ckpt", small, "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print("torch.compile: failed:", proc.stderr.strip().splitlines()[-1:])
            else:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"torch.compile (depth {args.compile_depth}): dense speed-up {r['dense_speedup']:.2f}x "
                      f"(compile {r['dense_compile_s']:.0f} s), packed speed-up {r['packed_speedup']:.2f}x "
                      f"(compile {r['packed_compile_s']:.0f} s)")


if __name__ == "__main__":
    main()
