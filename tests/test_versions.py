"""The release table: names, hub locations, resolutions and ViTDet settings as published."""

import pytest

from radio import DEFAULT_VERSION, Resolution, list_versions
from radio.versions import VERSIONS, UnknownVersionError, get_version

# (name, url, patch size, max res, preferred res, supports ViTDet) from the original's table
PUBLISHED = [
    ("radio_v2.5-b", "https://huggingface.co/nvidia/RADIO/resolve/main/radio-v2.5-b_half.pth.tar?download=true", 16, 2048, 768, True),
    ("radio_v2.5-l", "https://huggingface.co/nvidia/RADIO/resolve/main/radio-v2.5-l_half.pth.tar?download=true", 16, 2048, 768, True),
    ("radio_v2.5-h", "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.5-h.pth.tar?download=true", 16, 2048, 768, True),
    ("radio_v2.5-h-norm", "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.5-h-norm.pth.tar?download=true", 16, 2048, 768, True),
    ("radio_v2.5-g", "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.5-g.pth.tar?download=true", 14, 1792, 896, True),
    ("radio_v2.1", "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.1_bf16.pth.tar?download=true", 16, 2048, 432, True),
    ("radio_v2", "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.pth.tar?download=true", 16, 2048, 432, True),
    ("radio_v1", "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v1.pth.tar?download=true", 14, 1050, 378, True),
    ("e-radio_v2", "https://huggingface.co/nvidia/RADIO/resolve/main/eradio_v2.pth.tar?download=true", 16, 2048, 512, False),  # ViTDet refused for E-RADIO (the issue; the original ignores it)
    ("c-radio_v2-g", "https://huggingface.co/nvidia/C-RADIOv2-g/resolve/main/c-radio_v2-g_half.pth.tar", 16, 2048, 768, True),
    ("c-radio_v2-vlm-h", "https://huggingface.co/nvidia/C-RADIOv2-VLM-H/resolve/main/c-radio_v2-vlm-h.pth.tar", 16, 2048, 768, True),
    ("c-radio_v3-b", "https://huggingface.co/nvidia/C-RADIOv3-B/resolve/main/c-radio_v3-b_half.pth.tar?download=true", 16, 2048, 512, False),
    ("c-radio_v3-l", "https://huggingface.co/nvidia/C-RADIOv3-L/resolve/main/c-radio-v3_l_half.pth.tar?download=true", 16, 2048, 512, False),
    ("c-radio_v3-h", "https://huggingface.co/nvidia/C-RADIOv3-H/resolve/main/c-radio_v3-h_half.pth.tar?download=true", 16, 2048, 512, False),
    ("c-radio_v3-g", "https://huggingface.co/nvidia/C-RADIOv3-g/resolve/main/c-radio_v3-g_half.pth.tar?download=true", 16, 2048, 512, False),
    ("c-radio_v4-so400m", "https://huggingface.co/nvidia/C-RADIOv4-SO400M/resolve/main/c-radio_v4-so400m_half.pth.tar?download=true", 16, 2048, 512, True),
    ("c-radio_v4-h", "https://huggingface.co/nvidia/C-RADIOv4-H/resolve/main/c-radio_v4-h_half.pth.tar?download=true", 16, 2048, 512, True),
]


def test_all_seventeen_versions_in_order():
    assert list_versions() == [p[0] for p in PUBLISHED]
    assert DEFAULT_VERSION == "c-radio_v4-h"
    assert get_version("") is VERSIONS["c-radio_v4-h"]


@pytest.mark.parametrize("name,url,ps,max_res,pref,vitdet", PUBLISHED)
def test_record_matches_published_table(name, url, ps, max_res, pref, vitdet):
    v = get_version(name)
    assert v.url == url
    assert (v.patch_size, v.max_resolution, v.supports_vitdet) == (ps, max_res, vitdet)
    assert isinstance(v.preferred_resolution, Resolution)
    assert v.preferred_resolution == (pref, pref)
    assert ("Open Model" in v.license) == name.startswith("c-radio")


def test_vitdet_settings():
    assert get_version("radio_v2").vitdet_num_windowed == 5
    assert get_version("radio_v2.5-g").vitdet_num_global == 8
    assert get_version("radio_v2.5-b").vitdet_num_global == 4
    v4 = get_version("c-radio_v4-h")
    assert v4.vitdet_num_global is None and v4.vitdet_num_windowed is None


def test_records_are_frozen():
    import dataclasses

    v = get_version("radio_v2")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'patch_size'"):
        v.patch_size = 8
    assert get_version("radio_v2").patch_size == 16  # the shared record is unchanged


def test_unknown_version_lists_known_names():
    with pytest.raises(UnknownVersionError) as info:
        get_version("radio_v9")
    msg = str(info.value)
    assert "radio_v9" in msg and "c-radio_v4-h" in msg and "radio_v2.5-b" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
