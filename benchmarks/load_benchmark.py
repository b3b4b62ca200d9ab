"""Load time and peak memory of ``torch.hub.load(..., 'radio_model')`` against the original's strategy.

The script writes (or reuses) a synthetic checkpoint of the official layout with random bf16
weights, then measures, each in a fresh Python process whose imports are done before the clock
starts:

* **ours**: ``torch.hub.load(<this repo>, 'radio_model', source='local', version=<file>)``
  (meta-device build, memory-mapped weights-only read, ``load_state_dict(assign=True)``);
* **baseline**: the original's strategy rebuilt from the spec (``_baseline_loader.py``): full
  ``torch.load`` into memory, float32 timm ViT with random init, copy, ``.to(args.dtype)``;
* **ours (HF dir)** (unless ``--no-hf``): the same checkpoint exported once, in a separate process,
  as a layout-A Hugging Face directory (``radio.export.safetensors_export.export_safetensors`` of
  the model loaded with every adaptor: ``config.json`` + ``model.safetensors``), then loaded with
  ``torch.hub.load(<this repo>, 'radio_model', source='local', version=<dir>)`` (memory-mapped
  safetensors, same meta-device build). Its memory is also reported against its own file size,
  and the HF/``.pth.tar`` ratios of load time and peak memory are printed.

Both are followed by one 224x224 forward under ``torch.no_grad()``. Memory is the peak resident
set size (``VmHWM``, reset through ``/proc/self/clear_refs`` after the imports; cross-checked by a
thread that samples ``VmRSS`` every few milliseconds) minus the RSS right after the imports. The
page cache is warmed before every run, so both loaders read the file from memory.

Usage::

    python benchmarks/load_benchmark.py                 # ViT-H/16, 1.3 GB file, 3 runs each
    python benchmarks/load_benchmark.py --quick         # ViT-B/16 smoke check
    python benchmarks/load_benchmark.py --adaptors      # also attach all adaptors, both sides
    python benchmarks/load_benchmark.py --workdir /big/disk --keep
    python benchmarks/load_benchmark.py --no-hf         # skip the Hugging Face directory loader
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

#: Targets of the issue: load time at most 1/6 of the original's, peak increase at most 1.25x the file.
SPEEDUP_TARGET = 6.0
ABS_TIME_TARGET_S = 1.5
MEMORY_TARGET = 1.25

#: Teachers like a C-RADIO release: (name, summary/feature head output width); sam3 has no summary.
TEACHERS = (("siglip2-g", 1152), ("dino_v3", 1024), ("sam3", 256))

CONFIGS: Dict[str, Dict[str, Any]] = {
    # ViT-H/16 as in c-radio_v3-h / c-radio_v4-h: 32 x 1280, MLP 5120, 128 x 128 position table.
    "vit-h": dict(model="vit_huge_patch16_224", dim=1280, depth=32, mlp=5120, patch=16, cpe_max_size=2048,
                  head_hidden=1536, head_inner=1),
    # ViT-B/16 for a quick smoke check (~0.2 GB).
    "vit-b": dict(model="vit_base_patch16_224", dim=768, depth=12, mlp=3072, patch=16, cpe_max_size=1024,
                  head_hidden=1024, head_inner=1),
}
REGISTER_MULTIPLE = 8
HF_LABEL = "ours (HF dir)"


# ----------------------------------------------------------------------------------------------
# Checkpoint generation


def _prefix_counts() -> tuple:
    num_cls = len(TEACHERS)
    return num_cls, REGISTER_MULTIPLE - num_cls % REGISTER_MULTIPLE


def _state_dict(cfg: Dict[str, Any]) -> Dict[str, "torch.Tensor"]:
    """Random bf16 weights in the official key layout (checkpoint-format.md §4-5, adaptors.md §3.2)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=gen)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype)

    d, hm, ps = cfg["dim"], cfg["mlp"], cfg["patch"]
    grid = round(cfg["cpe_max_size"] / ps)
    num_cls, num_reg = _prefix_counts()
    sd: Dict[str, torch.Tensor] = {}
    bb = "base_model."
    for j in range(cfg["depth"]):
        b = f"{bb}blocks.{j}."
        sd.update({
            b + "norm1.weight": ones(d), b + "norm1.bias": rand(d),
            b + "attn.qkv.weight": rand(3 * d, d), b + "attn.qkv.bias": rand(3 * d),
            b + "attn.proj.weight": rand(d, d), b + "attn.proj.bias": rand(d),
            b + "norm2.weight": ones(d), b + "norm2.bias": rand(d),
            b + "mlp.fc1.weight": rand(hm, d), b + "mlp.fc1.bias": rand(hm),
            b + "mlp.fc2.weight": rand(d, hm), b + "mlp.fc2.bias": rand(d),
        })
    sd[bb + "patch_generator.pos_embed"] = rand(1, grid * grid, d)
    sd[bb + "patch_generator.embedder.weight"] = rand(d, 3 * ps * ps)
    sd[bb + "patch_generator.cls_token.token"] = rand(num_cls + num_reg, d)
    sd["input_conditioner.norm_mean"] = torch.tensor([0.485, 0.456, 0.406], dtype=dtype).view(3, 1, 1)
    sd["input_conditioner.norm_std"] = torch.tensor([0.229, 0.224, 0.225], dtype=dtype).view(3, 1, 1)
    hd = cfg["head_hidden"]
    for i, (_, out) in enumerate(TEACHERS):
        for group in ("_heads", "_feature_projections"):
            h = f"{group}.{i}."
            sd[h + "fc1.weight"], sd[h + "fc1.bias"] = rand(hd, d), rand(hd)
            for k in range(cfg["head_inner"]):
                sd[f"{h}blocks.{k}.0.weight"], sd[f"{h}blocks.{k}.0.bias"] = ones(hd), rand(hd)
                sd[f"{h}blocks.{k}.2.weight"], sd[f"{h}blocks.{k}.2.bias"] = rand(hd, hd), rand(hd)
            sd[h + "final.0.weight"], sd[h + "final.0.bias"] = ones(hd), rand(hd)
            sd[h + "final.2.weight"], sd[h + "final.2.bias"] = rand(out, hd), rand(out)
    return sd


def _args(cfg: Dict[str, Any]) -> argparse.Namespace:
    """Training ``args`` of a C-RADIO-like release stored in bf16 (checkpoint-format.md §3)."""
    import torch

    teachers = [{"name": n, "type": "generic", "use_summary": n != "sam3", "model": f"{n}-model",
                 "pretrained": True, "token_slot": i} for i, (n, _) in enumerate(TEACHERS)]
    return argparse.Namespace(
        model=cfg["model"], model_kwargs={}, teachers=teachers, cpe_max_size=cfg["cpe_max_size"],
        cls_token_per_teacher=True, register_multiple=REGISTER_MULTIPLE, cpe_num_registers=None,
        mlp_version="v2", spatial_mlp_version=None, spectral_reparam=False, spectral_heads=False, damp=None,
        dtype=torch.bfloat16, model_norm=False, in_chans=None, input_size=None, num_classes=0, drop=0.0,
        drop_path=0.0, drop_block=None, gp=None, bn_momentum=None, bn_eps=None, torchscript=False,
        initial_checkpoint=None, pretrained=False,
    )


def ensure_checkpoint(workdir: Path, name: str) -> Path:
    """The synthetic checkpoint for config ``name`` in ``workdir``, written once and then reused."""
    import torch

    path = workdir / f"radio_{name}_bf16_synthetic.pth.tar"
    if path.is_file():
        print(f"reusing {path} ({path.stat().st_size / 1e9:.2f} GB)")
        return path
    cfg = CONFIGS[name]
    t0 = time.perf_counter()
    sd = _state_dict(cfg)
    tmp = path.with_suffix(".partial")
    torch.save({"args": _args(cfg), "state_dict": sd, "epoch": 0, "arch": cfg["model"]}, tmp)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")
    return path


def _hf_files(directory: Path) -> List[Path]:
    return sorted(directory.glob("*.safetensors"))


def _hf_size(directory: Path) -> int:
    """Bytes of the directory's weights (``*.safetensors``) plus ``config.json``."""
    return sum(f.stat().st_size for f in _hf_files(directory)) + (directory / "config.json").stat().st_size


def _export_hf(ckpt: str, out_dir: str) -> None:
    """(child) Layout-A export of ``ckpt`` with every adaptor, through the package's exporter."""
    sys.path.insert(0, str(REPO))
    from radio import radio_model
    from radio.export.safetensors_export import export_safetensors

    names = [n for n, _ in TEACHERS]
    model, checkpoint = radio_model(ckpt, adaptor_names=names, return_checkpoint=True, progress=False)
    export_safetensors(model, checkpoint["args"], out_dir)


def ensure_hf_directory(ckpt: Path) -> Path:
    """The layout-A Hugging Face directory of ``ckpt`` beside it, exported once and then reused."""
    out = ckpt.parent / (ckpt.name.split(".")[0] + "_hf")
    if (out / "config.json").is_file() and _hf_files(out):
        print(f"reusing {out} ({_hf_size(out) / 1e9:.2f} GB)")
        return out
    shutil.rmtree(out, ignore_errors=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "export-hf", "--ckpt", str(ckpt),
           "--out", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"Hugging Face export failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)
    print(f"wrote {out} ({_hf_size(out) / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")
    return out


# ----------------------------------------------------------------------------------------------
# Measurement (child process)


def _status() -> Dict[str, int]:
    """Memory fields of ``/proc/self/status`` in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler(threading.Thread):
    """Samples ``VmRSS`` every ``interval`` seconds and keeps the maximum."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _status()["VmRSS"])
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _status()["VmRSS"])
        return self.peak


def _measure(kind: str, ckpt: str, adaptor_names: List[str], weight_init: Optional[str],
             sample_ms: float) -> Dict[str, Any]:
    import torch
    import torch.hub  # noqa: F401
    import timm  # noqa: F401

    if kind in ("ours", "hf"):  # ckpt: the .pth.tar file, or the Hugging Face directory
        sys.path.insert(0, str(REPO))
        import radio  # noqa: F401

        def load() -> Any:
            kwargs = {"adaptor_names": adaptor_names} if adaptor_names else {}
            return torch.hub.load(str(REPO), "radio_model", source="local", version=ckpt, progress=False,
                                  **kwargs)
    else:
        sys.path.insert(0, str(HERE))
        from _baseline_loader import load_like_original

        def load() -> Any:
            return load_like_original(ckpt, adaptor_names, weight_init)

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    gc.collect()
    base = _status()
    hwm_reset = _reset_hwm()
    sampler = _RssSampler(sample_ms / 1000.0) if sample_ms > 0 else None
    if sampler is not None:
        sampler.start()

    loadavg = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    model = load()
    t_load, c_load = time.perf_counter() - t0, time.process_time() - c0
    after_load = _status()
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    t_fwd = time.perf_counter() - t1
    end = _status()
    sampled = sampler.stop() if sampler is not None else 0

    backbone = out["backbone"] if isinstance(out, dict) else out
    summary = backbone[0]
    ref = base["VmRSS"]
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "kind": kind,
        "threads": torch.get_num_threads(),
        "load_s": t_load,
        "load_cpu_s": c_load,
        "loadavg_1min": loadavg,
        "forward_s": t_fwd,
        "base_rss": ref,
        "hwm_reset": hwm_reset,
        # with a working reset, VmHWM is the exact peak since the reset
        "peak_load": (after_load["VmHWM"] if hwm_reset else after_load["VmRSS"]) - ref,
        "peak_total": (end["VmHWM"] if hwm_reset else max(sampled, end["VmRSS"])) - ref,
        "peak_sampled": sampled - ref if sampled else None,
        "peak_ru_maxrss": ru_maxrss - ref,
        "end_rss": end["VmRSS"] - ref,
        "end_anon": end["RssAnon"] - base["RssAnon"],
        "end_file": end["RssFile"] - base["RssFile"],
        "summary_shape": list(summary.shape),
        "out_dtype": str(summary.dtype),
        "finite": bool(torch.isfinite(summary.float()).all()),
    }


# ----------------------------------------------------------------------------------------------
# Driver (parent process)


def _warm_page_cache(path: Path) -> None:
    for file in (_hf_files(path) + [path / "config.json"]) if path.is_dir() else [path]:
        with open(file, "rb") as f:
            while f.read(64 << 20):
                pass


def _run_child(kind: str, ckpt: Path, adaptor_names: List[str], weight_init: Optional[str],
               sample_ms: float) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--ckpt", str(ckpt),
           "--sample-ms", str(sample_ms)]
    if adaptor_names:
        cmd += ["--adaptor-names", ",".join(adaptor_names)]
    if weight_init is not None:
        cmd += ["--weight-init", weight_init]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _summarize(rows: Dict[str, List[Dict[str, Any]]], size: int,
               sizes: Optional[Dict[str, int]] = None) -> Dict[str, Dict[str, float]]:
    """Medians per loader; ``x_file`` is the peak increase over that loader's file (``sizes[label]``,
    default ``size``)."""
    out = {}
    for label, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("load_s", "load_cpu_s", "loadavg_1min", "forward_s", "peak_load", "peak_total",
                         "end_anon", "end_file")}
        med["load_min"] = min(r["load_s"] for r in runs)
        med["load_max"] = max(r["load_s"] for r in runs)
        sampled = [r["peak_sampled"] for r in runs if r["peak_sampled"] is not None]
        med["peak_sampled"] = statistics.median(sampled) if sampled else float("nan")
        med["peak_ru"] = statistics.median(r["peak_ru_maxrss"] for r in runs)
        med["file_bytes"] = (sizes or {}).get(label, size)
        med["x_file"] = med["peak_total"] / med["file_bytes"]
        out[label] = med
    return out


def _print_table(stats: Dict[str, Dict[str, float]], size: int, title: str, judge: bool) -> None:
    print(f"\n{title}  (file {_gb(size)}, {os.cpu_count()} CPUs, medians)")
    head = f"{'loader':<26}{'load s':>9}{'min-max':>15}{'cpu s':>8}{'fwd s':>8}{'peak load':>11}{'peak +fwd':>11}" \
           f"{'x file':>8}{'sampled':>10}{'ru_maxrss':>11}{'end anon':>10}{'end file':>10}{'loadavg':>9}"
    print(head)
    print("-" * len(head))
    for label, m in stats.items():
        print(f"{label:<26}{m['load_s']:>9.2f}{m['load_min']:>7.2f}-{m['load_max']:<7.2f}"
              f"{m['load_cpu_s']:>8.2f}{m['forward_s']:>8.2f}"
              f"{m['peak_load'] / 1e9:>11.2f}{m['peak_total'] / 1e9:>11.2f}{m['x_file']:>8.2f}"
              f"{m['peak_sampled'] / 1e9:>10.2f}{m['peak_ru'] / 1e9:>11.2f}{m['end_anon'] / 1e9:>10.2f}"
              f"{m['end_file'] / 1e9:>10.2f}{m['loadavg_1min']:>9.1f}")
    ours = stats["ours"]
    if not judge:
        print("(smoke check: the targets apply to the ViT-H/16 run)")
    hf = stats.get(HF_LABEL)
    if hf is not None:
        print(f"HF directory vs .pth.tar: load {hf['load_s']:.2f} s vs {ours['load_s']:.2f} s "
              f"({hf['load_s'] / ours['load_s']:.2f}x time, {hf['load_cpu_s'] / ours['load_cpu_s']:.2f}x CPU); "
              f"peak +{_gb(hf['peak_total'])} vs +{_gb(ours['peak_total'])} "
              f"({hf['peak_total'] / ours['peak_total']:.2f}x); during load alone +{_gb(hf['peak_load'])} vs "
              f"+{_gb(ours['peak_load'])}; {hf['x_file']:.2f}x its own file ({_gb(hf['file_bytes'])}: "
              f"backbone + all adaptor heads in float32) vs {ours['x_file']:.2f}x")
    for label, m in stats.items():
        if label in ("ours", HF_LABEL):
            continue
        speedup = m["load_s"] / ours["load_s"]
        verdict = f" (target >= {SPEEDUP_TARGET:.0f}x: {'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'})"
        print(f"speed-up vs {label}: {speedup:.1f}x wall, {m['load_cpu_s'] / ours['load_cpu_s']:.1f}x CPU time"
              f"{verdict if judge else ''}; memory {ours['x_file']:.2f}x vs {m['x_file']:.2f}x of the file")
    if not judge:
        return
    print(f"ours: load {ours['load_s']:.2f} s (reference target <= {ABS_TIME_TARGET_S} s: "
          f"{'PASS' if ours['load_s'] <= ABS_TIME_TARGET_S else 'FAIL'}); peak increase {ours['x_file']:.2f}x the "
          f"file (target <= {MEMORY_TARGET}x: {'PASS' if ours['x_file'] <= MEMORY_TARGET else 'FAIL'})")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the checkpoint is written / reused (default: <tmp>/radio_load_benchmark)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint file afterwards")
    p.add_argument("--quick", action="store_true", help="ViT-B/16 instead of ViT-H/16 (smoke check)")
    p.add_argument("--repeat", type=int, default=3, help="fresh-process runs per loader (default 3)")
    p.add_argument("--adaptors", action="store_true", help="attach every adaptor on both sides")
    p.add_argument("--baseline-init", action="append", choices=("skip", "timm"), default=None,
                   help="baseline weight_init: 'skip' (what the original passes by default; PyTorch default "
                        "init still runs) and/or 'timm' (timm's trunc-normal init); repeatable")
    p.add_argument("--sample-ms", type=float, default=5.0, help="RSS sampling period (0 disables)")
    p.add_argument("--json", type=Path, default=None, help="also write all raw results to this file")
    p.add_argument("--no-hf", dest="hf", action="store_false",
                   help="skip the Hugging Face directory loader (by default the checkpoint is also exported "
                        "as a layout-A directory beside it and loaded from there)")
    # internal: one measurement (or the export) in this (fresh) process
    p.add_argument("--child", choices=("ours", "baseline", "hf", "export-hf"), help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--adaptor-names", default="", help=argparse.SUPPRESS)
    p.add_argument("--weight-init", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child == "export-hf":
        _export_hf(a.ckpt, a.out)
        return 0
    if a.child:
        names = [n for n in a.adaptor_names.split(",") if n]
        print(json.dumps(_measure(a.child, a.ckpt, names, a.weight_init, a.sample_ms)))
        return 0

    name = "vit-b" if a.quick else "vit-h"
    default_dir = a.workdir is None
    workdir = a.workdir or Path(tempfile.gettempdir()) / "radio_load_benchmark"
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    need = (0.3e9 if a.quick else 1.5e9) * (2 if a.hf else 1)
    if free < need and not any(workdir.glob(f"radio_{name}_*.pth.tar")):
        raise SystemExit(f"Only {_gb(free)} free in {workdir}; the checkpoint needs ~{_gb(need)}. "
                         "Pass --workdir on a disk with more room.")
    ckpt = ensure_checkpoint(workdir, name)
    size = ckpt.stat().st_size
    hf_dir = ensure_hf_directory(ckpt) if a.hf else None
    inits = a.baseline_init or ["skip"]
    adaptor_names = [n for n, _ in TEACHERS] if a.adaptors else []
    # (label, child kind, timm weight_init passed to the baseline)
    hf_loader = [(HF_LABEL, "hf", None)] if hf_dir is not None else []
    loaders = [("ours", "ours", None)] + hf_loader + [
        (f"baseline (init={i})", "baseline", "" if i == "timm" else "skip") for i in inits]
    rows: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _, _ in loaders}
    hf_size = _hf_size(hf_dir) if hf_dir is not None else 0
    try:
        for r in range(a.repeat):
            for label, kind, weight_init in loaders:
                source = hf_dir if kind == "hf" else ckpt
                _warm_page_cache(source)
                res = _run_child(kind, source, adaptor_names, weight_init, a.sample_ms)
                rows[label].append(res)
                file_size = hf_size if kind == "hf" else size
                print(f"run {r + 1}/{a.repeat} {label:<22} load {res['load_s']:.2f} s (cpu {res['load_cpu_s']:.2f} s, "
                      f"loadavg {res['loadavg_1min']:.1f}), forward "
                      f"{res['forward_s']:.2f} s, peak +{_gb(res['peak_total'])} "
                      f"({res['peak_total'] / file_size:.2f}x), out {res['summary_shape']} {res['out_dtype']}"
                      f"{'' if res['finite'] else ' NOT FINITE'}", flush=True)
    finally:
        if not a.keep:
            ckpt.unlink(missing_ok=True)
            if hf_dir is not None:
                shutil.rmtree(hf_dir, ignore_errors=True)
            if default_dir and not any(workdir.iterdir()):
                workdir.rmdir()
    stats = _summarize(rows, size, {HF_LABEL: hf_size} if hf_dir is not None else None)
    title = f"{CONFIGS[name]['model']} bf16{' + all adaptors' if a.adaptors else ''}"
    _print_table(stats, size, title, judge=not a.quick)
    if a.json:
        a.json.write_text(json.dumps({"file_bytes": size, "hf_bytes": hf_size, "config": name, "adaptors": a.adaptors,
                                      "cpus": os.cpu_count(), "runs": rows, "medians": stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
