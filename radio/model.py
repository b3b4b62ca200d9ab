"""``RADIOModel``: conditioner -> backbone -> summary / features -> normalizer -> adaptors.

The public module that ``radio_model`` returns. It reproduces the original's ``forward`` and
``forward_intermediates``, with clear errors where the
original fails or silently misbehaves.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from .adaptors import Adaptor
from .backbone import RadioViT
from .eradio import ERadioBackbone
from .layers.conditioner import InputConditioner
from .layers.normalizers import FeatureNormalizer, IntermediateFeatureNormalizer, NullIntermediateNormalizer
from .config import RadioConfig, TeacherConfig
from .input_checks import check_image_batch, check_image_values, nearest_supported_resolution, resolve_indices
from .outputs import RadioOutput, Resolution, check_feature_fmt, to_nchw
from .packed import PackedImages, check_packed, pack_images

__all__ = ["RADIOModel", "ForwardOutput", "resolve_indices"]

ForwardOutput = Union[RadioOutput, Dict[str, RadioOutput]]
AGGREGATIONS = ("sparse", "dense")
ALPHA_SCHEMES = ("post-alpha", "pre-alpha", "none")


def _looks_packed(images: object, ps: int) -> bool:
    """Whether ``images`` is a ``(patches, grid_hw)`` pair rather than a list of two images:
    its first item is a patch matrix ``(N, 3*ps*ps)``, possibly with a batch axis of 1."""
    if not isinstance(images, (list, tuple)) or len(images) != 2 or not torch.is_tensor(images[0]):
        return False
    first = images[0]
    if first.ndim == 2:
        return True
    return first.ndim == 3 and first.shape[0] == 1 and first.shape[-1] == 3 * ps * ps


class RADIOModel(nn.Module):
    """A RADIO vision foundation model.

    Args:
        config: the model's configuration (architecture, tokens, teachers, release metadata); every
            property below reads from it.
        model: the backbone (conditioned image -> tokens).
        input_conditioner: input standardization (identity once made external).
        adaptors: teacher adaptors, in load order.
        feature_normalizer: applied to the final patch tokens (identity if the checkpoint has none).
        inter_feature_normalizer: per-block normalizer for ``forward_intermediates`` (or ``None``).
    """

    def __init__(self, config: RadioConfig, model: RadioViT, input_conditioner: nn.Module,
                 adaptors: Optional[Dict[str, Adaptor]] = None, feature_normalizer: Optional[nn.Module] = None,
                 inter_feature_normalizer: Optional[IntermediateFeatureNormalizer] = None) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.input_conditioner = input_conditioner
        self.register_buffer("summary_idxs", torch.tensor(config.summary_idxs, dtype=torch.int64), persistent=False)
        self.adaptors = nn.ModuleDict(adaptors or {})
        self.feature_normalizer = feature_normalizer if feature_normalizer is not None else nn.Identity()
        self.inter_feature_normalizer = inter_feature_normalizer
        self._warned: Set[str] = set()  # input warnings already given (once per model)

    def reset_non_persistent_buffers(self) -> None:
        """(Re)create the constant buffers, e.g. after the model was built on the meta device."""
        device = self.input_conditioner.norm_mean.device if hasattr(self.input_conditioner, "norm_mean") else None
        self.summary_idxs = torch.tensor(self.config.summary_idxs, dtype=torch.int64, device=device)

    @classmethod
    def from_config(cls, config: RadioConfig,
                    heads: Mapping[str, Tuple[TeacherConfig, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]] = {},
                    *, feature_normalizer: bool = False,
                    intermediate_normalizer: Optional[Tuple[int, bool]] = None,
                    text_weights: Optional[Mapping[str, Any]] = None,
                    lenient_text: bool = False) -> "RADIOModel":
        """Build the whole model, empty, from its configuration (under ``torch.device('meta')`` to load).

        Args:
            config: the model configuration.
            heads: adaptor name -> (its teacher, summary head state, feature head state); the states
                give the heads' shapes (values are not copied).
            feature_normalizer: whether the model has a feature normalizer.
            intermediate_normalizer: ``(num_layers, per_layer_rotation)`` of the intermediate
                normalizer, or ``None``.
            text_weights: local text-tower weights per adaptor name.
            lenient_text: adaptors whose text model this package cannot name get no text tower
                (a warning) instead of an error (Hugging Face repositories).

        Raises:
            ValueError: a head that does not match its state, or an invalid ViTDet setting.
        """
        cfg = config
        if cfg.is_eradio:
            cfg.vitdet_global_blocks()  # rejects a ViTDet window with a clear error
            backbone: nn.Module = ERadioBackbone(cfg.arch, dtype=cfg.dtype)
        else:
            backbone = RadioViT(cfg.arch, cfg.cpe_max_size, cfg.num_cls_tokens, cfg.num_registers,
                                final_norm=cfg.final_norm, window_size=cfg.vitdet_window_size,
                                global_blocks=cfg.vitdet_global_blocks(), dtype=cfg.dtype)
        adaptors = {name: Adaptor.from_config(teacher, summary, feature, (text_weights or {}).get(name),
                                              lenient_text=lenient_text)
                    for name, (teacher, summary, feature) in heads.items()}
        feat = FeatureNormalizer(cfg.embed_dim, dtype=cfg.dtype) if feature_normalizer else None
        inter = None
        if intermediate_normalizer is not None:
            num_layers, per_layer_rotation = intermediate_normalizer
            inter = IntermediateFeatureNormalizer(num_layers, cfg.embed_dim, per_layer_rotation, dtype=cfg.dtype)
        return cls(cfg, backbone, InputConditioner(), adaptors, feat, inter)

    # ------------------------------------------------------------------------------------------
    # Properties of the original API (all derived from `config`)

    @property
    def version(self) -> Optional[str]:
        """The release name, or ``None`` for a file loaded without one."""
        return self.config.release.name

    @property
    def patch_size(self) -> int:
        """Patch size in pixels."""
        return self.config.patch_size

    @property
    def max_resolution(self) -> int:
        """Largest side the release was trained for (else the position table's size in pixels)."""
        return self.config.max_resolution

    @property
    def preferred_resolution(self) -> Optional[Resolution]:
        """The resolution the release is tuned for, when known."""
        return self.config.release.preferred_resolution

    @property
    def window_size(self) -> Optional[int]:
        """ViTDet window side in patches, or ``None``."""
        return self.config.vitdet_window_size

    @property
    def min_resolution_step(self) -> int:
        """Input sides must be multiples of this: the patch size, times the ViTDet window size if set."""
        return self.config.min_resolution_step

    @property
    def num_summary_tokens(self) -> int:
        """Prefix tokens before the patch tokens (summary tokens plus registers)."""
        return self.config.num_prefix_tokens

    @property
    def num_cls_tokens(self) -> int:
        """Summary tokens the model reads: ``T``, widened to reach every loaded adaptor's token slot."""
        slots = [a.head_idx for a in self.adaptors.values()]
        return max(self.config.num_cls_tokens, max(slots, default=-1) + 1)

    @property
    def summary_dim(self) -> int:
        """Width of the backbone summary: ``embed_dim * len(summary_idxs)``; E-RADIO's
        summary is the mean of its features, ``embed_dim`` wide."""
        return self.embed_dim * (1 if self.config.is_eradio else len(self.config.summary_idxs))

    @property
    def embed_dim(self) -> int:
        """Feature width ``D`` (E-RADIO: the neck width)."""
        return self.config.embed_dim

    @property
    def num_intermediates(self) -> int:
        """How many outputs :meth:`forward_intermediates` can select: the blocks of a ViT, or E-RADIO's
        five pyramid maps (levels at strides 4, 8, 16, 32 and the neck)."""
        return self.model.num_pyramid_levels if self.config.is_eradio else len(self.model.blocks)

    @property
    def blocks(self) -> Optional[nn.ModuleList]:
        """The transformer blocks (``None`` for E-RADIO, as in the original)."""
        return None if self.config.is_eradio else self.model.blocks

    # ------------------------------------------------------------------------------------------
    # E-RADIO's attention window (the original's API on the backbone, mirrored here)

    @property
    def window_policy(self) -> str:
        """E-RADIO: ``'fixed'`` (the window set by :meth:`change_window_size`, default the construction
        window) or ``'auto'`` (each call uses the optimal window for its own input size, computed per
        call: no shared state changes, so threads with different sizes do not interfere). The setting
        lives on the backbone (``model.model.window_policy``); ViTs are always ``'fixed'``."""
        return self.model.window_policy if self.config.is_eradio else "fixed"

    @window_policy.setter
    def window_policy(self, value: str) -> None:
        if value != "fixed" and not self.config.is_eradio:
            raise ValueError("window_policy applies to E-RADIO models only (ViTs use vitdet_window_size)")
        if self.config.is_eradio:
            self.model.window_policy = value

    def _eradio_backbone(self, what: str) -> "ERadioBackbone":
        if not self.config.is_eradio:
            raise AttributeError(f"{what} applies to E-RADIO models only; this is a ViT ({self.config.arch.name})")
        return self.model

    def set_optimal_window_size(self, image_dim: Union[int, Sequence[int]], max_window_size: int = 16) -> None:
        """E-RADIO: use the optimal attention window for ``image_dim`` ((H, W) or one side) from now on."""
        self._eradio_backbone("set_optimal_window_size").set_optimal_window_size(image_dim, max_window_size)

    def change_window_size(self, new_window_size: int) -> None:
        """E-RADIO: use ``new_window_size`` as the attention window side from now on."""
        self._eradio_backbone("change_window_size").change_window_size(new_window_size)

    def _eradio_forward(self, x: torch.Tensor, feature_fmt: str) -> ForwardOutput:
        return self._extract_eradio(self.model(x), feature_fmt)

    def _extract_eradio(self, neck: torch.Tensor, feature_fmt: str,
                        adaptor_names: Optional[Sequence[str]] = None) -> ForwardOutput:
        """Neck map -> summary (token mean, before the normalizer), normalized features, adaptors."""
        tokens = neck.flatten(2).transpose(1, 2)  # B, h*w, F
        summary = tokens.mean(dim=1)  # every adaptor's summary head reads it too
        return self._outputs(summary, summary, tokens, (neck.shape[-2], neck.shape[-1]), feature_fmt, adaptor_names)

    def get_nearest_supported_resolution(self, height: int, width: int) -> Resolution:
        """The closest size the model accepts: each side rounded to a multiple of ``min_resolution_step``
        (at least one step) and capped at the release's ``max_resolution`` (when the release is known).

        Raises:
            ValueError: a side that is not a positive finite number.
        """
        return nearest_supported_resolution(height, width, self.min_resolution_step,
                                            self.config.release.max_resolution)

    def switch_to_deploy(self) -> None:
        """Kept for API compatibility: ViTs have nothing to re-parametrize, and E-RADIO folds its
        BatchNorms and caches its position bias automatically in eval mode."""

    def _vit_backbone(self, what: str) -> RadioViT:
        if self.config.is_eradio:
            raise NotImplementedError(f"{what} applies to ViT backbones; E-RADIO ({self.config.arch.name}) has "
                                      "convolutional levels and no transformer blocks to checkpoint or prune.")
        return self.model

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (less memory when fine-tuning; ViTs)."""
        self._vit_backbone("set_grad_checkpointing").grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int], None] = 1,
                                  prune_norm: bool = False) -> List[int]:
        """Drop the blocks after the last of ``indices`` (timm's contract); returns the selected indices.

        Args:
            indices: as in :meth:`forward_intermediates`.
            prune_norm: also drop the backbone's final norm.
        """
        backbone = self._vit_backbone("prune_intermediate_layers")
        take = resolve_indices(indices, len(backbone.blocks))
        backbone.blocks = backbone.blocks[: take[-1] + 1]
        if prune_norm:
            self.model.norm = nn.Identity()
        return take

    def make_preprocessor_external(self) -> nn.Module:
        """Return the input conditioner and stop applying it inside the model.

        Afterwards inputs must already be standardized (``conditioner(x)``). A second call returns
        the identity that replaced it.
        """
        cond = self.input_conditioner
        self.input_conditioner = nn.Identity()
        return cond

    @contextlib.contextmanager
    def cpe_video_mode(self, frames: int) -> Iterator[None]:
        """Treat inputs as ``(videos * frames, C, H, W)``: in training mode, the frames of one video
        share one random position-table viewport. Restores the previous setting on exit."""
        if int(frames) < 1:
            raise ValueError(f"cpe_video_mode needs frames >= 1, got {frames}")
        if self.config.is_eradio:
            raise AttributeError("cpe_video_mode applies to ViTs (CPE position table); E-RADIO has none")
        gen = self.model.patch_generator
        previous = gen.num_video_frames
        gen.num_video_frames = int(frames)
        try:
            yield
        finally:
            gen.num_video_frames = previous

    # ------------------------------------------------------------------------------------------
    # Forward

    def _check_input(self, x: torch.Tensor) -> None:
        """Shape errors, then (eager calls only) warnings for likely mistakes in the values."""
        check_image_batch(x, self.min_resolution_step, max_resolution=self.config.release.max_resolution)
        check_image_values(x, standardizes=not isinstance(self.input_conditioner, nn.Identity),
                           max_resolution=self.config.release.max_resolution, warned=self._warned)

    def _condition(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize (in float32) and cast to the backbone's current dtype (it follows ``.half()`` etc.)."""
        return self.input_conditioner(x).to(next(self.model.parameters()).dtype)

    def _summary(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The one summary-token rule: ``(tokens the adaptors read, backbone summary (B, summary_dim))``.

        The DINOv2-wrapper family summarizes with token 0 alone; every other backbone concatenates
        the summary tokens of ``summary_idxs``.
        """
        if self.config.single_summary:
            return tokens[:, 0], tokens[:, 0]
        all_summary = tokens[:, : self.num_cls_tokens]
        return all_summary, all_summary[:, self.summary_idxs].flatten(1)

    def _extract(self, tokens: torch.Tensor, grid_hw: Tuple[int, int], feature_fmt: str,
                 adaptor_names: Optional[Sequence[str]] = None) -> ForwardOutput:
        """Backbone tokens -> summary, normalized features and adaptor outputs."""
        all_summary, summary = self._summary(tokens)
        return self._outputs(all_summary, summary, tokens[:, self.num_summary_tokens:], grid_hw, feature_fmt,
                             adaptor_names)

    def _outputs(self, adaptor_summary: torch.Tensor, summary: torch.Tensor, patch_tokens: torch.Tensor,
                 grid_hw: Tuple[int, int], feature_fmt: str, adaptor_names: Optional[Sequence[str]]) -> ForwardOutput:
        """The feature normalizer, then the backbone output and the adaptors' (all loaded ones by default).

        Adaptors read ``adaptor_summary`` in float32 and the normalized features.
        """
        features = self.feature_normalizer(patch_tokens)
        backbone = RadioOutput(summary, to_nchw(features, grid_hw) if feature_fmt == "NCHW" else features)
        names = list(self.adaptors) if adaptor_names is None else list(adaptor_names)
        if not names:
            return backbone
        out: Dict[str, RadioOutput] = {"backbone": backbone}
        summary_in = adaptor_summary.float()
        for name in names:
            out[name] = self.adaptors[name](summary_in, features, grid_hw, feature_fmt)
        return out

    def forward(self, x: torch.Tensor, feature_fmt: str = "NLC", num_tokens: Optional[int] = None) -> ForwardOutput:
        """Summary and dense features of an image batch.

        Args:
            x: RGB images ``(B, 3, H, W)``, floating point in ``[0, 1]``; ``H`` and ``W`` multiples of
                :attr:`min_resolution_step`.
            feature_fmt: ``'NLC'`` -> features ``(B, h*w, D)``; ``'NCHW'`` -> ``(B, D, h, w)``.
            num_tokens: only for RADIO1D research models; must be ``None`` for ViTs.

        Returns:
            Without adaptors a :class:`RadioOutput` ``(summary (B, summary_dim), features)`` in the
            backbone dtype; with adaptors a dict ``{'backbone': RadioOutput, <adaptor>: RadioOutput}``
            (adaptor outputs in float32).
        """
        if num_tokens is not None:
            raise TypeError("num_tokens only applies to RADIO1D research models; ViT backbones take no token budget.")
        check_feature_fmt(feature_fmt)
        self._check_input(x)
        x = self._condition(x)
        if self.config.is_eradio:
            return self._eradio_forward(x, feature_fmt)
        tokens = self.model(x)
        return self._extract(tokens, self.model.grid_size(x), feature_fmt)

    def _eradio_intermediates(self, x: torch.Tensor, indices: Union[int, Sequence[int], None],
                              return_prefix_tokens: bool, norm: bool, stop_early: bool, output_fmt: str,
                              intermediates_only: bool, aggregation: str
                              ) -> Union[list, Tuple[ForwardOutput, list]]:
        """E-RADIO's multi-scale pyramid: level maps at strides 4, 8, 16, 32 (indices 0-3) and the neck (4).

        With ``return_prefix_tokens`` each entry is ``RadioOutput(token mean of the map, map)``: E-RADIO
        has no summary tokens, and the token mean is how its summary is defined.
        """
        if norm or aggregation != "sparse":
            raise ValueError("E-RADIO's forward_intermediates returns its feature pyramid (levels at strides "
                             "4, 8, 16, 32 and the neck), whose maps differ in size and width: norm and "
                             "aggregation='dense' apply to ViTs only.")
        x = self._condition(x)
        if intermediates_only:
            maps = self.model.forward_pyramid(x, indices, stop_early=stop_early)
        else:  # one pass gives both the selected maps and the neck behind the final output
            every = self.model.forward_pyramid(x, None)
            maps = [every[i] for i in resolve_indices(indices, self.model.num_pyramid_levels)]
        results: list = [m if output_fmt == "NCHW" else m.flatten(2).transpose(1, 2) for m in maps]
        if return_prefix_tokens:
            results = [RadioOutput(m.flatten(2).mean(dim=2), r) for m, r in zip(maps, results)]
        if intermediates_only:
            return results
        return self._extract_eradio(every[-1], output_fmt), results

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, Sequence[int], None] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        aggregation: str = "sparse",
        norm_alpha_scheme: str = "post-alpha",
    ) -> Union[List[torch.Tensor], List[RadioOutput], Tuple[ForwardOutput, list]]:
        """Outputs of selected blocks (timm's ``forward_intermediates`` contract, RADIO extras last).

        Args:
            x: RGB images ``(B, 3, H, W)`` in ``[0, 1]`` (sides multiples of :attr:`min_resolution_step`).
            indices: ``None`` = every block; ``n`` = the last ``n`` blocks; or a list of block
                indices (negative ones count from the end). Output is in ascending block order.
            return_prefix_tokens: return ``RadioOutput(summary, features)`` per block instead of features.
            norm: apply the backbone's final norm to each intermediate (and to the final output).
            stop_early: do not run blocks after the last selected one.
            output_fmt: ``'NCHW'`` or ``'NLC'``.
            intermediates_only: return only the list.
            aggregation: ``'sparse'`` (the selected blocks' outputs) or ``'dense'`` (the mean over each
                group of blocks since the previous selected one).
            norm_alpha_scheme: how the intermediate normalizer's alphas combine in dense mode:
                ``'post-alpha'``, ``'pre-alpha'`` or ``'none'`` (no normalizer).

        Returns:
            The list of intermediates, or ``(final, intermediates)`` where ``final`` is what
            :meth:`forward` would give for the last block run (a dict if adaptors are loaded).
        """
        self._check_intermediate_args(output_fmt, aggregation, norm_alpha_scheme)
        self._check_input(x)  # sides must be multiples of the patch (and ViTDet window) size here too
        if self.config.is_eradio:
            return self._eradio_intermediates(x, indices, return_prefix_tokens, norm, stop_early, output_fmt,
                                              intermediates_only, aggregation)
        selected = resolve_indices(indices, len(self.model.blocks))
        x = self._condition(x)
        grid = self.model.grid_size(x)
        blocks = ((i, [t]) for i, t in self.model.iter_blocks(x, stop=selected[-1] if stop_early else None))
        emitted, last = self._collect_intermediates(blocks, 1, selected, aggregation, norm_alpha_scheme,
                                                    selected[-1] if stop_early else len(self.model.blocks) - 1)
        final_norm = self.model.norm if norm else nn.Identity()
        results = self._format_intermediates(emitted[0], final_norm, grid, output_fmt, return_prefix_tokens)
        if intermediates_only:
            return results
        return self._extract(final_norm(last[0]), grid, output_fmt), results

    def _check_intermediate_args(self, output_fmt: str, aggregation: str, norm_alpha_scheme: str) -> None:
        check_feature_fmt(output_fmt)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if norm_alpha_scheme not in ALPHA_SCHEMES:
            raise ValueError(f"norm_alpha_scheme must be one of {ALPHA_SCHEMES}, got {norm_alpha_scheme!r}")

    def _collect_intermediates(self, blocks: Iterator[Tuple[int, Sequence[torch.Tensor]]], n: int,
                               selected: List[int], aggregation: str, norm_alpha_scheme: str, last_block: int
                               ) -> Tuple[List[List[torch.Tensor]], Sequence[torch.Tensor]]:
        """The selected blocks' (normalized, maybe group-averaged) tokens, for ``n`` token sequences.

        Args:
            blocks: ``(block index, [tokens of sequence j])`` after each block run.
            n: number of sequences (1 for a dense batch, one per image when packed).
            selected: ascending block indices to emit.
            aggregation, norm_alpha_scheme: as in :meth:`forward_intermediates`.
            last_block: the last block that runs (``selected[-1]`` with ``stop_early``).

        Returns:
            ``(emitted[j] = one tensor per selected block, the last block's tokens per sequence)``.
        """
        normalizer: nn.Module = self.inter_feature_normalizer
        depth = len(self.model.blocks)
        if normalizer is None or norm_alpha_scheme == "none":
            normalizer = NullIntermediateNormalizer()
        else:  # it must cover every block it normalizes: the selected ones, or every block run when dense
            used = selected[-1] if aggregation == "sparse" else last_block
            if used >= normalizer.num_layers:
                raise ValueError(f"the intermediate normalizer covers blocks 0..{normalizer.num_layers - 1} of {depth}; "
                                 f"this call normalizes block {used}. Select earlier blocks (with stop_early=True "
                                 "for dense aggregation) or pass norm_alpha_scheme='none'.")
        skip = self.num_summary_tokens  # each sequence's own prefix tokens pass through the normalizer
        wanted = set(selected)
        emitted: List[List[torch.Tensor]] = [[] for _ in range(n)]
        acc: List[Any] = [None] * n
        asum: List[Any] = [None] * n
        count = 0
        group = iter(selected)
        group_end = next(group)
        parts: Sequence[torch.Tensor] = ()
        for i, parts in blocks:
            if aggregation == "dense":
                for j, t in enumerate(parts):
                    y, a = normalizer(t, index=i, rot_index=group_end, skip=skip)
                    term, a_term = (y, a) if norm_alpha_scheme == "post-alpha" else (a * y, 1)
                    acc[j] = term if acc[j] is None else acc[j] + term
                    asum[j] = a_term if asum[j] is None else asum[j] + a_term
                count += 1
            if i in wanted:
                for j, t in enumerate(parts):
                    if aggregation == "dense":
                        out = ((asum[j] / count) * acc[j]) / count
                    else:
                        y, a = normalizer(t, index=i, skip=skip)
                        out = a * y
                    emitted[j].append(out)
                if aggregation == "dense":
                    acc, asum, count = [None] * n, [None] * n, 0
                    group_end = next(group, group_end)
        return emitted, parts

    def _format_intermediates(self, emitted: Sequence[torch.Tensor], final_norm: nn.Module, grid: Tuple[int, int],
                              output_fmt: str, return_prefix_tokens: bool) -> list:
        results: list = []
        for t in emitted:
            t = final_norm(t)
            spatial = t[:, self.num_summary_tokens:]
            if output_fmt == "NCHW":
                spatial = to_nchw(spatial, grid).contiguous()
            results.append(RadioOutput(self._block_summary(t), spatial) if return_prefix_tokens else spatial)
        return results

    def _block_summary(self, tokens: torch.Tensor) -> torch.Tensor:
        """A block's summary for ``forward_intermediates``: its ``T`` summary tokens, reduced to
        ``summary_idxs`` when there is more than one, flattened to ``(B, k*D)``; a single summary
        token gives ``(B, D)``. The same rule for every ViT family (the DINOv2 wrapper's ``forward``
        alone keeps token 0)."""
        prefix = tokens[:, : self.config.num_cls_tokens]
        if prefix.shape[1] > 1:
            prefix = prefix[:, self.summary_idxs]
        return prefix.flatten(1)

    # ------------------------------------------------------------------------------------------
    # Packed variable-resolution batches

    def _pack_input(self, images: Union[Sequence[torch.Tensor], PackedImages, Tuple[torch.Tensor, torch.Tensor]]
                    ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """Validate a packed call's input; return ``(conditioned patches (sum N_i, 3*ps*ps), grids)``."""
        if not isinstance(self.model, RadioViT):
            raise NotImplementedError(
                f"forward_packed needs a ViT backbone (RadioViT); this model's backbone is "
                f"{type(self.model).__name__}, whose convolutional stages cannot mix images of different sizes. "
                "Run its images one by one (model(img[None])) or in equal-size batches.")
        if self.training:
            raise ValueError("forward_packed runs in eval mode only (training draws random position viewports per "
                             "batch); call model.eval(), or train on equal-size batches with model(x).")
        ps = self.patch_size
        is_packed = isinstance(images, PackedImages) or _looks_packed(images, ps)
        if is_packed and not isinstance(images, PackedImages):
            patches, grid = images
            if patches.ndim == 3:
                raise ValueError(f"packed patches have a batch axis: shape {tuple(patches.shape)}; pass "
                                 f"patches[0] of shape ({patches.shape[1]}, {patches.shape[2]}) (sum of h*w patches).")
            if isinstance(grid, (list, tuple)):  # e.g. [[h0, w0], [h1, w1]]
                grid = torch.tensor(grid, dtype=torch.int64)
            images = (patches, grid)
        if not is_packed and isinstance(images, (list, tuple)):
            for i, img in enumerate(images):  # shapes only (no pass over the pixels): the forward's own messages
                if torch.is_tensor(img) and img.ndim == 3:
                    try:
                        check_image_batch(img.unsqueeze(0), self.min_resolution_step,
                                          max_resolution=self.config.release.max_resolution)
                    except (TypeError, ValueError) as e:
                        raise type(e)(f"image {i}: {e}") from None
        packed = PackedImages(*images) if is_packed else pack_images(images, ps)  # type, dtype, device checks
        grids = check_packed(packed, ps, self.min_resolution_step)  # the model's step (ViTDet windows)
        patches = packed.patches
        counts = torch.tensor([h * w for h, w in grids], device=patches.device)
        check_image_values(patches.reshape(-1, 3, ps, ps),
                           standardizes=not isinstance(self.input_conditioner, nn.Identity),
                           max_resolution=self.config.release.max_resolution, warned=self._warned,
                           sizes=[(h * ps, w * ps) for h, w in grids],
                           image_of=torch.repeat_interleave(torch.arange(len(grids), device=patches.device), counts))
        conditioned = self._condition(patches.reshape(-1, 3, ps, ps)).reshape(patches.shape[0], -1)
        return conditioned, grids

    def forward_packed(self, images: Union[Sequence[torch.Tensor], PackedImages], feature_fmt: str = "NLC"
                       ) -> List[ForwardOutput]:
        """Images of different sizes in one forward pass; per image exactly what :meth:`forward` gives.

        Token-wise layers run once over all images' tokens; attention stays within each image
        (a variable-length kernel on CUDA when available, else per image).

        Args:
            images: a list of RGB images ``(3, H_i, W_i)`` in ``[0, 1]`` (sides multiples of
                :attr:`min_resolution_step`, one dtype and device), or a packed batch
                (:func:`radio.pack_images`: ``patches (sum N_i, 3*ps*ps)`` channel-major raw pixels,
                ``grid_hw (n, 2)``, transformers' ``image_grid_hw`` layout; also a plain
                ``(patches, grid_hw)`` pair, the grid as a tensor or nested lists).
            feature_fmt: ``'NLC'`` or ``'NCHW'`` as in :meth:`forward`.

        Returns:
            One output per image, each ``model(image[None], feature_fmt)`` (batch axis of 1): a
            :class:`RadioOutput`, or a dict with adaptors.

        Raises:
            NotImplementedError: a backbone that is not a ViT (E-RADIO).
            ValueError: training mode, an empty input, or an invalid image size or shape.
            TypeError: a wrong input type, non-floating images, or mixed dtypes / devices.
        """
        check_feature_fmt(feature_fmt)
        patches, grids = self._pack_input(images)
        tokens, segments = self.model.forward_packed(patches, grids)
        return [self._extract(t, g, feature_fmt) for t, g in zip(segments.split(tokens), segments.grids)]

    def forward_intermediates_packed(
        self,
        images: Union[Sequence[torch.Tensor], PackedImages],
        indices: Union[int, Sequence[int], None] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        aggregation: str = "sparse",
        norm_alpha_scheme: str = "post-alpha",
    ) -> List[Union[List[torch.Tensor], List[RadioOutput], Tuple[ForwardOutput, list]]]:
        """:meth:`forward_intermediates` for images of different sizes, in one packed pass.

        Args:
            images: as in :meth:`forward_packed`.
            indices, return_prefix_tokens, norm, stop_early, output_fmt, intermediates_only,
                aggregation, norm_alpha_scheme: as in :meth:`forward_intermediates`.

        Returns:
            One entry per image, each what ``forward_intermediates(image[None], ...)`` returns.
        """
        self._check_intermediate_args(output_fmt, aggregation, norm_alpha_scheme)
        patches, grids = self._pack_input(images)
        selected = resolve_indices(indices, len(self.model.blocks))
        blocks = ((i, segments.split(tokens)) for i, tokens, segments in
                  self.model.iter_blocks_packed(patches, grids, stop=selected[-1] if stop_early else None))
        emitted, last = self._collect_intermediates(blocks, len(grids), selected, aggregation, norm_alpha_scheme,
                                                    selected[-1] if stop_early else len(self.model.blocks) - 1)
        final_norm = self.model.norm if norm else nn.Identity()
        results: list = []
        for j, grid in enumerate(grids):
            per_image = self._format_intermediates(emitted[j], final_norm, grid, output_fmt, return_prefix_tokens)
            results.append(per_image if intermediates_only
                           else (self._extract(final_norm(last[j]), grid, output_fmt), per_image))
        return results
