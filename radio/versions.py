"""The released RADIO checkpoints as frozen data.

One :class:`RadioVersion` record per release. Names such as ``c-radio_v4-h`` are keys of
:data:`VERSIONS`, never identifiers in code. Where the weights live (a Hugging Face Hub repository
and file name), the patch size, the resolutions, the ViTDet settings and the licence come from the
original project's release table; everything about the network
itself (width, depth, teachers, token counts) is read from each checkpoint's ``args``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .outputs import Resolution

__all__ = [
    "DEFAULT_VERSION",
    "RadioVersion",
    "Resolution",
    "UnknownVersionError",
    "VERSIONS",
    "get_version",
    "list_versions",
    "version_for_hf_repo",
]


class UnknownVersionError(KeyError, ValueError):
    """A version name that is not in the release table (and not an existing file)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


NON_COMMERCIAL = "NVIDIA Source Code License-NC (non-commercial use only)"
OPEN_MODEL = "NVIDIA Open Model License (commercial use allowed)"


@dataclass(frozen=True)
class RadioVersion:
    """One released checkpoint.

    Attributes:
        name: the version key, e.g. ``'c-radio_v4-h'``.
        repo_id: Hugging Face Hub model repository holding the file.
        filename: file name inside that repository (also the torch-hub cache file name).
        patch_size: ViT patch size in pixels.
        max_resolution: largest side the position table was trained for (informational).
        preferred_resolution: the resolution the release is tuned for.
        license: licence of the weights (our code is Apache-2.0; the weights are NVIDIA's).
        adaptors: teacher adaptor names the original documentation lists for this family.
        supports_vitdet: whether ``vitdet_window_size`` may be used with this release.
        vitdet_num_windowed: windowed blocks per period (``period = n + 1``), if set.
        vitdet_num_global: number of global blocks (``period = depth // n``), if set.
        download_query: query string of the original URL (kept for fidelity only).
        sha256: expected SHA-256 of the file, verified after download when known.
        hf_repo_id: Hugging Face model repository loadable as a model directory (``config.json`` +
            ``*.safetensors``), or ``None`` where the release table names none.
        width_depth: ``(embed_dim, depth)`` of the release's ViT as the original's documents state it
            (ViT-B 768x12, L 1024x24, H 1280x32, g 1536x40, SO400M 1152x27), used to catch a local file
            loaded under the wrong release name; ``None`` where unstated.
    """

    name: str
    repo_id: str
    filename: str
    patch_size: int
    max_resolution: int
    preferred_resolution: Resolution
    license: str
    adaptors: Tuple[str, ...] = ()
    supports_vitdet: bool = True
    vitdet_num_windowed: Optional[int] = None
    vitdet_num_global: Optional[int] = None
    download_query: str = "?download=true"
    sha256: Optional[str] = None
    hf_repo_id: Optional[str] = None
    width_depth: Optional[Tuple[int, int]] = None

    @property
    def url(self) -> str:
        """The download URL the original implementation uses."""
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}{self.download_query}"


_V25 = ("clip", "siglip", "dino_v2", "sam")
_V2 = ("clip", "dino_v2", "sam")
_V3 = ("clip", "siglip2-g", "dino_v2", "sam")
_V4 = ("siglip2-g", "dino_v3", "sam3")
_R512 = Resolution(512, 512)
_R768 = Resolution(768, 768)


def _table(*records: RadioVersion) -> Dict[str, RadioVersion]:
    return {r.name: r for r in records}


VERSIONS: Dict[str, RadioVersion] = _table(
    RadioVersion("radio_v2.5-b", "nvidia/RADIO", "radio-v2.5-b_half.pth.tar", 16, 2048, _R768,
                 NON_COMMERCIAL, _V25, vitdet_num_global=4, width_depth=(768, 12)),
    RadioVersion("radio_v2.5-l", "nvidia/RADIO", "radio-v2.5-l_half.pth.tar", 16, 2048, _R768,
                 NON_COMMERCIAL, _V25, vitdet_num_global=4, width_depth=(1024, 24)),
    RadioVersion("radio_v2.5-h", "nvidia/RADIO", "radio_v2.5-h.pth.tar", 16, 2048, _R768,
                 NON_COMMERCIAL, _V25, vitdet_num_global=4, width_depth=(1280, 32)),
    RadioVersion("radio_v2.5-h-norm", "nvidia/RADIO", "radio_v2.5-h-norm.pth.tar", 16, 2048, _R768,
                 NON_COMMERCIAL, _V25, vitdet_num_global=4, width_depth=(1280, 32)),
    RadioVersion("radio_v2.5-g", "nvidia/RADIO", "radio_v2.5-g.pth.tar", 14, 1792, Resolution(896, 896),
                 NON_COMMERCIAL, _V25, vitdet_num_global=8, width_depth=(1536, 40)),
    RadioVersion("radio_v2.1", "nvidia/RADIO", "radio_v2.1_bf16.pth.tar", 16, 2048, Resolution(432, 432),
                 NON_COMMERCIAL, _V2, vitdet_num_windowed=5, width_depth=(1280, 32)),
    RadioVersion("radio_v2", "nvidia/RADIO", "radio_v2.pth.tar", 16, 2048, Resolution(432, 432),
                 NON_COMMERCIAL, _V2, vitdet_num_windowed=5, width_depth=(1280, 32)),
    RadioVersion("radio_v1", "nvidia/RADIO", "radio_v1.pth.tar", 14, 1050, Resolution(378, 378),
                 NON_COMMERCIAL, width_depth=(1280, 32)),
    RadioVersion("e-radio_v2", "nvidia/RADIO", "eradio_v2.pth.tar", 16, 2048, _R512, NON_COMMERCIAL,
                 supports_vitdet=False, hf_repo_id="nvidia/E-RADIO"),
    RadioVersion("c-radio_v2-g", "nvidia/C-RADIOv2-g", "c-radio_v2-g_half.pth.tar", 16, 2048, _R768,
                 OPEN_MODEL, vitdet_num_global=8, download_query="", hf_repo_id="nvidia/C-RADIOv2-g"),
    RadioVersion("c-radio_v2-vlm-h", "nvidia/C-RADIOv2-VLM-H", "c-radio_v2-vlm-h.pth.tar", 16, 2048, _R768,
                 OPEN_MODEL, vitdet_num_global=8, download_query="", hf_repo_id="nvidia/C-RADIOv2-VLM-H"),
    RadioVersion("c-radio_v3-b", "nvidia/C-RADIOv3-B", "c-radio_v3-b_half.pth.tar", 16, 2048, _R512,
                 OPEN_MODEL, _V3, supports_vitdet=False, hf_repo_id="nvidia/C-RADIOv3-B", width_depth=(768, 12)),
    RadioVersion("c-radio_v3-l", "nvidia/C-RADIOv3-L", "c-radio-v3_l_half.pth.tar", 16, 2048, _R512,
                 OPEN_MODEL, _V3, supports_vitdet=False, hf_repo_id="nvidia/C-RADIOv3-L", width_depth=(1024, 24)),
    RadioVersion("c-radio_v3-h", "nvidia/C-RADIOv3-H", "c-radio_v3-h_half.pth.tar", 16, 2048, _R512,
                 OPEN_MODEL, _V3, supports_vitdet=False, hf_repo_id="nvidia/C-RADIOv3-H", width_depth=(1280, 32)),
    RadioVersion("c-radio_v3-g", "nvidia/C-RADIOv3-g", "c-radio_v3-g_half.pth.tar", 16, 2048, _R512,
                 OPEN_MODEL, _V3, supports_vitdet=False, hf_repo_id="nvidia/C-RADIOv3-g", width_depth=(1536, 40)),
    RadioVersion("c-radio_v4-so400m", "nvidia/C-RADIOv4-SO400M", "c-radio_v4-so400m_half.pth.tar", 16, 2048,
                 _R512, OPEN_MODEL, _V4, hf_repo_id="nvidia/C-RADIOv4-SO400M", width_depth=(1152, 27)),
    RadioVersion("c-radio_v4-h", "nvidia/C-RADIOv4-H", "c-radio_v4-h_half.pth.tar", 16, 2048, _R512,
                 OPEN_MODEL, _V4, hf_repo_id="nvidia/C-RADIOv4-H", width_depth=(1280, 32)),
)

DEFAULT_VERSION = "c-radio_v4-h"


def list_versions() -> List[str]:
    """Names of all released versions, in release-table order."""
    return list(VERSIONS)


def version_for_hf_repo(repo_id: str) -> Optional[RadioVersion]:
    """The release whose Hugging Face model repository is ``repo_id`` (case-insensitive), if any."""
    key = repo_id.strip().strip("/").lower()
    for record in VERSIONS.values():
        if record.hf_repo_id is not None and record.hf_repo_id.lower() == key:
            return record
    return None


def get_version(name: str) -> RadioVersion:
    """Look a version up by name (``''`` means :data:`DEFAULT_VERSION`).

    Raises:
        UnknownVersionError: the name is not in the table; the message lists the known names.
    """
    key = name or DEFAULT_VERSION
    try:
        return VERSIONS[key]
    except KeyError:
        raise UnknownVersionError(
            f"Unknown RADIO version {name!r}. Known versions: {', '.join(VERSIONS)}. "
            "To load a local checkpoint file, pass its path (it must exist) as `version=` "
            "or `checkpoint_path=`."
        ) from None
