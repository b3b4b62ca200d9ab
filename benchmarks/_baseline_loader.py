"""The original RADIO loading strategy, rebuilt from the spec so that it can be timed.

The original implementation is not available here, so this module follows what
``shared/spec/checkpoint-format.md`` §1, §8-9 and ``model.md`` §2-3 say it does, step by step:

1. ``torch.load(path, map_location='cpu', weights_only=False)``: the whole file is read into
   freshly allocated memory (no memory map);
2. the timm ``VisionTransformer`` is built in float32, with its own random initialization
   (``weight_init`` popped from ``args.model_kwargs``, default ``'skip'``: timm's ``init_weights``
   is skipped but every ``nn.Linear``/``nn.LayerNorm`` still runs its PyTorch default init);
3. the CPE patch generator (``Linear`` without bias, a ``G x G`` position table and the prefix
   tokens, all float32 and randomly initialized) replaces timm's patch embedding;
4. ``load_state_dict(strict=False)`` copies the stored (bf16) tensors into the float32 parameters;
5. the input conditioner is built and loaded; the backbone is cast with ``.to(args.dtype)``;
6. requested adaptor heads are built in float32 (random init) and loaded strictly.

Only what the loading cost depends on is reproduced faithfully; the forward pass is the plain
eval-mode CPE ViT forward (model.md §4, §6) so that the post-load memory of one inference is
comparable. This is benchmark scaffolding, not part of the package.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["OriginalLikeRadio", "load_like_original"]

#: The architectures the original registers itself that the benchmark uses (model.md §2.2).
_REGISTERED = {
    "vit_huge_patch16_224": dict(patch_size=16, embed_dim=1280, depth=32, num_heads=16),
}


class _ClsToken(nn.Module):
    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(num_tokens, dim) / math.sqrt(dim))


class _CpeGenerator(nn.Module):
    """Patchify, embed, add the resized position table, prepend the prefix tokens (eval mode)."""

    def __init__(self, patch_size: int, dim: int, grid: int, num_prefix: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = grid
        self.embedder = nn.Linear(3 * patch_size * patch_size, dim, bias=False)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, dim) / math.sqrt(dim))
        self.cls_token = _ClsToken(dim, num_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        ps = self.patch_size
        h, w = hh // ps, ww // ps
        patches = x.reshape(b, c, h, ps, w, ps).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * ps * ps)
        tokens = self.embedder(patches)
        if (h, w) == (self.grid, self.grid):
            pos = self.pos_embed
        else:
            table = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            m = max(h, w)
            table = F.interpolate(table.float(), size=(m, m), mode="bilinear", align_corners=False)
            pos = table.to(self.pos_embed.dtype)[:, :, :h, :w].flatten(2).transpose(1, 2)
        tokens = tokens + pos
        prefix = self.cls_token.token.unsqueeze(0).expand(b, -1, -1)
        return torch.cat([prefix, tokens], dim=1)


class _OriginalLikeViT(nn.Module):
    """The original's CPE ViT: ``patch_generator`` + the timm model's ``blocks`` + ``norm``."""

    def __init__(self, generator: _CpeGenerator, blocks: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.patch_generator = generator
        self.blocks = blocks
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.patch_generator(x)))


class _Conditioner(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("norm_mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1))
        self.register_buffer("norm_std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.norm_mean) / self.norm_std).to(self.dtype)


class _MlpV2(nn.Module):
    def __init__(self, in_features: int, hidden: int, out_features: int, num_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden))
                                     for _ in range(num_inner)])
        self.final = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        for blk in self.blocks:
            x = x + blk(x)
        return self.final(x)


def _mlp_from_state(sd: Mapping[str, torch.Tensor]) -> _MlpV2:
    hidden, in_features = sd["fc1.weight"].shape
    n = 0
    while f"blocks.{n}.0.weight" in sd:
        n += 1
    head = _MlpV2(in_features, hidden, sd["final.2.weight"].shape[0], n)  # float32, random init
    head.load_state_dict(sd, strict=True)
    return head


class OriginalLikeRadio(nn.Module):
    """Conditioner -> CPE ViT -> summary / features (-> float32 adaptor heads)."""

    def __init__(self, conditioner: _Conditioner, backbone: _OriginalLikeViT, summary_idxs: Sequence[int],
                 num_prefix: int, adaptors: Dict[str, Tuple[int, nn.Module, nn.Module]]) -> None:
        super().__init__()
        self.input_conditioner = conditioner
        self.model = backbone
        self.summary_idxs = list(summary_idxs)
        self.num_prefix = num_prefix
        self.heads = nn.ModuleDict({n: nn.ModuleList([s, f]) for n, (_, s, f) in adaptors.items()})
        self.slots = {n: slot for n, (slot, _, _) in adaptors.items()}

    def forward(self, x: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        y = self.model(self.input_conditioner(x))
        summary = y[:, self.summary_idxs].flatten(1)
        features = y[:, self.num_prefix:]
        out = {"backbone": (summary, features)}
        for name, (sum_head, feat_head) in self.heads.items():
            s = sum_head(y[:, self.slots[name]].float())
            f = feat_head(features.float()).to(features.dtype).float()
            out[name] = (s, f)
        return out


def _count_prefix(args: Any) -> Tuple[int, int, List[int]]:
    teachers = list(args.teachers)
    per_teacher = getattr(args, "cls_token_per_teacher", True)
    num_cls = len({t["name"] for t in teachers}) if per_teacher else 1
    multiple = getattr(args, "register_multiple", None)
    num_reg = getattr(args, "cpe_num_registers", None) or (multiple - num_cls % multiple if multiple else 0)
    first: Dict[str, int] = {}
    for i, t in enumerate(teachers):
        if t.get("use_summary", True) and t["name"] not in first:
            first[t["name"]] = i
    return num_cls, num_reg, sorted(first.values()) if per_teacher else [0]


def _timm_vit(args: Any) -> VisionTransformer:
    kwargs = dict(args.model_kwargs)
    weight_init = kwargs.pop("weight_init", "skip")
    factory = dict(num_classes=args.num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path,
                   global_pool=args.gp, weight_init=weight_init)
    factory = {k: v for k, v in factory.items() if v is not None}
    if args.model in _REGISTERED:
        return VisionTransformer(**{**_REGISTERED[args.model], **factory, **kwargs})
    return timm.create_model(args.model, pretrained=False, **factory, **kwargs)


def load_like_original(path: str, adaptor_names: Sequence[str] = (),
                       weight_init: Optional[str] = None) -> OriginalLikeRadio:
    """Load ``path`` the way the original does (float32 build + copy + cast); eval mode.

    Args:
        path: an official-layout checkpoint.
        adaptor_names: adaptors to build (float32 MLP v2 heads).
        weight_init: override ``args.model_kwargs['weight_init']`` (``''`` = timm's full init).
    """
    chk = torch.load(path, map_location="cpu", weights_only=False)
    args = chk["args"]
    sd = chk.get("state_dict_ema") or chk["state_dict"]
    if weight_init is not None:
        args.model_kwargs = dict(args.model_kwargs, weight_init=weight_init)
    vit = _timm_vit(args)
    ps = vit.patch_embed.patch_size[0]
    grid = round(args.cpe_max_size / ps)
    num_cls, num_reg, summary_idxs = _count_prefix(args)
    generator = _CpeGenerator(ps, vit.embed_dim, grid, num_cls + num_reg)
    norm = vit.norm if getattr(args, "model_norm", False) else nn.Identity()
    backbone = _OriginalLikeViT(generator, vit.blocks, norm)
    del vit
    backbone.load_state_dict({k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")},
                             strict=False)
    conditioner = _Conditioner(args.dtype)
    conditioner.load_state_dict({k[len("input_conditioner."):]: v for k, v in sd.items()
                                 if k.startswith("input_conditioner.")}, strict=True)
    backbone.to(dtype=args.dtype)
    adaptors = {}
    for name in adaptor_names:
        idx = next(i for i, t in enumerate(args.teachers) if t["name"] == name)
        heads = []
        for group in ("_heads", "_feature_projections"):
            hsd = {}
            for pre in (f"{group}.{idx}.", f"{group}.{name}."):
                hsd.update({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)})
            heads.append(_mlp_from_state(hsd))
        adaptors[name] = (args.teachers[idx].get("token_slot", idx), heads[0], heads[1])
    return OriginalLikeRadio(conditioner, backbone, summary_idxs, num_cls + num_reg, adaptors).eval()
