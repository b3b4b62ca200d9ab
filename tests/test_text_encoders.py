"""Tests of the lazily built text towers (radio/text_encoders.py) against open_clip/transformers.

All weights are random and written to ``tmp_path``; the Hugging Face Hub is switched to offline mode
with an empty cache, so nothing is downloaded.
"""

import json
import pickle
import string
import sys

import pytest
import torch
import torch.nn.functional as F

from radio_test_utils import require_module
from radio.text_encoders import (
    SIGLIP2_MODEL_IDS,
    OpenClipTextEncoder,
    SigLIP2TextEncoder,
    TextWeightsUnavailableError,
    build_text_encoder,
    canonicalize_text,
)

open_clip = require_module("open_clip")
transformers = require_module("transformers")

TEXTS = ["a photo of a cat", "A_DOG, running!", "", "x-ray of 3 lungs"]
ATOL = 1e-6
# Tiny open_clip configs, registered under new names, in the two checkpoint layouts: CLIP (text
# tower at the top level; QuickGELU like RADIO's DFN CLIP teacher) and CustomTextCLIP (text tower
# under `text.`; SigLIP-like text settings). Both use open_clip's own BPE tokenizer (no download).
_TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
_TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_CLIP = "radio-test-tiny-clip"
TINY_CUSTOM = "radio-test-tiny-custom-text"
TINY_CONFIGS = {
    TINY_CLIP: {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": _TINY_VISION,
        "text_cfg": _TINY_TEXT,
    },
    TINY_CUSTOM: {
        "embed_dim": 24,
        "custom_text": True,
        "init_logit_bias": -10,
        "vision_cfg": _TINY_VISION,
        "text_cfg": {
            **_TINY_TEXT,
            "width": 48,
            "no_causal_mask": True,
            "pool_type": "last",
            "proj_bias": True,
            "norm_kwargs": {"eps": 1e-6},
        },
    },
}


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever the machine has."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads these once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _text_param_count(model: torch.nn.Module) -> int:
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")
    )


# ----------------------------------------------------------------------------------------------
# open_clip


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    """Random tiny open_clip models by name, with checkpoints (.pt for the CLIP layout,
    .safetensors for the CustomTextCLIP one)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    result = {}
    for seed, (name, config) in enumerate(TINY_CONFIGS.items()):
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
        torch.manual_seed(seed)
        model = open_clip.create_model(name).eval()
        if config.get("custom_text"):
            assert isinstance(model, open_clip.CustomTextCLIP)
            path = folder / f"{name}.safetensors"
            save_file(model.state_dict(), str(path))
        else:
            assert isinstance(model, open_clip.CLIP)
            path = folder / f"{name}.pt"
            torch.save(model.state_dict(), path)
        result[name] = model, path
    return result


def test_open_clip_tokenizer_of_builtin_config():
    enc = OpenClipTextEncoder("ViT-H-14-378-quickgelu", "dfn5b", teacher_name="clip")
    tokens = enc.tokenizer(TEXTS)
    assert not enc.is_loaded  # tokenizing needs no weights
    assert torch.equal(tokens, open_clip.get_tokenizer("ViT-H-14-378-quickgelu")(TEXTS))
    assert tokens.shape == (len(TEXTS), 77) and tokens.dtype == torch.long
    assert torch.equal(enc.tokenizer("a photo of a cat"), tokens[:1])


@pytest.mark.parametrize("name", [TINY_CLIP, TINY_CUSTOM])
def test_open_clip_matches_library_and_builds_only_text(tiny_clips, name):
    ref, path = tiny_clips[name]
    enc = OpenClipTextEncoder(name, str(path), teacher_name="clip").eval()
    assert not enc.is_loaded and list(enc.parameters()) == []

    tokens = enc.tokenizer(TEXTS)
    assert not enc.is_loaded
    assert torch.equal(tokens, open_clip.get_tokenizer(name)(TEXTS))
    assert tokens.shape == (len(TEXTS), 16)  # the config's context length

    with torch.no_grad():
        out = enc.encode_text(tokens)
        out_norm = enc.encode_text(tokens, normalize=True)
        expected = ref.encode_text(tokens)
        expected_norm = ref.encode_text(tokens, normalize=True)
    assert enc.is_loaded
    assert out.shape == (len(TEXTS), TINY_CONFIGS[name]["embed_dim"])
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(out_norm, expected_norm, rtol=0, atol=ATOL)
    torch.testing.assert_close(out_norm.norm(dim=-1), torch.ones(len(TEXTS)))

    # Only the text tower exists, under `oc_model`, in eval mode like its owner.
    names = [n for n, _ in enc.named_parameters()]
    assert names and all(n.startswith("oc_model.text.") for n in names)
    assert sum(p.numel() for p in enc.parameters()) == _text_param_count(ref)
    assert not enc.oc_model.training


def test_open_clip_weights_override_and_train_mode(tiny_clips):
    ref, path = tiny_clips[TINY_CUSTOM]
    enc = build_text_encoder(
        {"name": "clip", "type": "open_clip", "model": TINY_CUSTOM, "pretrained": "no-such-tag"},
        weights=path,
    )
    assert isinstance(enc, OpenClipTextEncoder)
    tokens = enc.tokenizer(TEXTS)
    with torch.no_grad():
        out = enc.encode_text(tokens)
        torch.testing.assert_close(out, ref.encode_text(tokens), rtol=1e-5, atol=ATOL)  # same weights, other BLAS order
    assert enc.oc_model.training  # built while the owner was in train mode


def test_open_clip_dtype_anchor_and_later_moves(tiny_clips):
    ref, path = tiny_clips[TINY_CLIP]
    enc = OpenClipTextEncoder(TINY_CLIP, str(path))
    enc.to(torch.float64)  # before the tower exists
    tokens = enc.tokenizer(TEXTS)
    with torch.no_grad():
        out64 = enc.encode_text(tokens)
        assert out64.dtype == torch.float64
        assert {p.dtype for p in enc.parameters()} == {torch.float64}
        expected64 = ref.double().encode_text(tokens)
        ref.float()
        torch.testing.assert_close(out64, expected64, rtol=0, atol=1e-12)
        enc.to(torch.float32)  # the built tower follows
        assert {p.dtype for p in enc.parameters()} == {torch.float32}
        out32 = enc.encode_text(tokens)
        torch.testing.assert_close(out32, ref.encode_text(tokens), rtol=0, atol=ATOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_text_tower_built_on_owner_device(tiny_clips):
    ref, path = tiny_clips[TINY_CLIP]
    enc = OpenClipTextEncoder(TINY_CLIP, str(path)).cuda()
    tokens = enc.tokenizer(TEXTS)  # CPU tokens are moved to the tower's device
    with torch.no_grad():
        out = enc.encode_text(tokens)
        expected = ref.encode_text(tokens)
    assert out.device.type == "cuda"
    assert {p.device.type for p in enc.parameters()} == {"cuda"}
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-5)


def test_open_clip_missing_weights_file(tmp_path):
    enc = OpenClipTextEncoder(TINY_CLIP, "none", weights=tmp_path / "nope.pt", teacher_name="clip")
    with pytest.raises(TextWeightsUnavailableError) as info:
        enc.encode_text(torch.zeros(1, 16, dtype=torch.long))
    message = str(info.value)
    assert "nope.pt" in message and "'clip'" in message and "text_weights={'clip'" in message
    assert not enc.is_loaded


def test_open_clip_unknown_tag():
    enc = OpenClipTextEncoder("ViT-S-32", "no-such-tag", teacher_name="clip")
    with pytest.raises(TextWeightsUnavailableError, match="no-such-tag.*text_weights"):
        enc.load()
    assert not enc.is_loaded


def test_open_clip_known_tag_offline_not_cached():
    # The real RADIO CLIP teacher; its weights are on the Hub, which is offline here.
    teacher = {"type": "open_clip", "model": "ViT-H-14-378-quickgelu", "pretrained": "dfn5b"}
    enc = build_text_encoder({"name": "clip", **teacher})
    with pytest.raises(TextWeightsUnavailableError) as info:
        enc.encode_text(torch.zeros(1, 77, dtype=torch.long))
    message = str(info.value)
    assert "ViT-H-14-378-quickgelu" in message and "dfn5b" in message
    assert "text_weights={'clip'" in message
    assert not enc.is_loaded


def test_open_clip_hf_hub_name_offline():
    enc = OpenClipTextEncoder("hf-hub:timm/ViT-B-16-SigLIP", None, teacher_name="siglip")
    with pytest.raises(TextWeightsUnavailableError, match="hf-hub:timm/ViT-B-16-SigLIP"):
        enc.load()


def test_open_clip_bad_model_and_checkpoint(tmp_path, tiny_clips):
    with pytest.raises(ValueError, match="not an open_clip model config"):
        OpenClipTextEncoder("ViT-Nope-1", "x").load()
    with pytest.raises(ValueError, match="CoCa"):
        OpenClipTextEncoder("coca_ViT-B-32", "x").load()
    # A checkpoint of another model: the widths of the two tiny text towers differ.
    with pytest.raises(ValueError, match="do not match"):
        OpenClipTextEncoder(TINY_CLIP, str(tiny_clips[TINY_CUSTOM][1])).load()
    # Keys that belong to neither tower are not silently dropped.
    ref, _ = tiny_clips[TINY_CLIP]
    path = tmp_path / "extra.pt"
    torch.save({**ref.state_dict(), "mystery.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="mystery.weight"):
        OpenClipTextEncoder(TINY_CLIP, str(path)).load()


def test_missing_packages_name_the_pip_package(monkeypatch, tiny_clips):
    path = tiny_clips[TINY_CLIP][1]
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
        OpenClipTextEncoder(TINY_CLIP, str(path)).encode_text(torch.zeros(1, 16).long())
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install -U transformers"):
        SigLIP2TextEncoder("siglip2-g-384").tokenizer(["a cat"])


# ----------------------------------------------------------------------------------------------
# SigLIP2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A_photo-of a   DOG!!", "a photoof a dog"),
        ("\tHello,\nWorld.  ", "hello world"),
        ("it's_a (test)", "its a test"),
        ("snake_case_name", "snake case name"),
        ("x-ray: 3.5%", "xray 35"),
        ("tab\tand\u00a0nbsp", "tab and nbsp"),
        ("Ünïcode ÇA", "ünïcode ça"),
        ("___", ""),
        ("", ""),
    ],
)
def test_canonicalize_text(text, expected):
    assert canonicalize_text(text) == expected


@pytest.fixture(scope="module")
def tiny_siglip2(tmp_path_factory):
    """A random tiny SigLIP2 model and a small BPE tokenizer, saved with save_pretrained."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
    merges = [("▁", "a"), ("▁", "c"), ("a", "t")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = transformers.Siglip2Tokenizer(vocab=vocab, merges=merges)
    config = transformers.Siglip2Config(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_patches=16,
            patch_size=4,
        ),
    )
    torch.manual_seed(2)
    model = transformers.Siglip2Model(config).eval()
    folder = tmp_path_factory.mktemp("siglip2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, folder


def test_siglip2_matches_library(tiny_siglip2):
    ref, folder = tiny_siglip2
    enc = build_text_encoder(
        {"name": "siglip2-g", "type": "siglip2", "model": "siglip2-g-384"}, weights=folder
    ).eval()
    assert isinstance(enc, SigLIP2TextEncoder)
    assert enc.hf_id == "google/siglip2-giant-opt-patch16-384"
    texts = TEXTS + ["a cat " * 100]  # the last one is truncated
    tokens = enc.tokenizer(texts)
    assert not enc.is_loaded

    processor = transformers.Siglip2Processor(
        image_processor=transformers.Siglip2ImageProcessor(),
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
    )
    expected_tokens = processor(
        text=[canonicalize_text(t) for t in texts],
        return_tensors="pt",
        max_length=64,
        padding="max_length",
        truncation=True,
    )
    assert tokens.keys() == expected_tokens.keys()
    for key in expected_tokens:
        assert torch.equal(tokens[key], expected_tokens[key])
    assert tokens["input_ids"].shape == (len(texts), 64)
    # Canonicalization happened: these two texts only differ in case, punctuation and '_'.
    pair = enc.tokenizer(["A_DOG, running!", "a dog running"])
    assert torch.equal(pair["input_ids"][0], pair["input_ids"][1])

    with torch.no_grad():
        out = enc.encode_text(tokens)
        out_norm = enc.encode_text(tokens, normalize=True)
        expected = ref.text_model(**expected_tokens, return_dict=True).pooler_output
    assert out.shape == (len(texts), 32)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(out_norm, F.normalize(expected, dim=-1), rtol=0, atol=ATOL)

    # Only the text model was created, as the `text_model` submodule.
    assert isinstance(enc.text_model, transformers.Siglip2TextModel)
    assert not any("vision" in n for n, _ in enc.named_parameters())
    assert sum(p.numel() for p in enc.parameters()) == sum(
        p.numel() for p in ref.text_model.parameters()
    )
    assert not enc.text_model.training
    # A built encoder survives pickling (the tower class is importable from radio.text_encoders).
    clone = pickle.loads(pickle.dumps(enc))
    with torch.no_grad():
        torch.testing.assert_close(clone.encode_text(tokens), out, rtol=0, atol=0)


def test_siglip2_dtype_anchor(tiny_siglip2):
    ref, folder = tiny_siglip2
    enc = SigLIP2TextEncoder("siglip2-so400m", weights=str(folder)).to(torch.float64).eval()
    tokens = enc.tokenizer(["a cat", "a dog"])
    with torch.no_grad():
        out = enc.encode_text(tokens)
        expected = ref.text_model(**tokens).pooler_output
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected.double(), rtol=0, atol=1e-5)


def test_siglip2_unknown_model():
    with pytest.raises(ValueError) as info:
        build_text_encoder({"name": "siglip2-g", "type": "siglip2", "model": "siglip2-huge"})
    assert isinstance(info.value, KeyError)  # adaptors.md §7: the original's lookup gives KeyError
    for model, hf_id in SIGLIP2_MODEL_IDS.items():
        assert model in str(info.value) and hf_id in str(info.value)


def test_siglip2_offline_without_weights():
    enc = SigLIP2TextEncoder("siglip2-g-384", teacher_name="siglip2-g")
    for call in (lambda: enc.tokenizer(["a cat"]), enc.load):
        with pytest.raises(TextWeightsUnavailableError) as info:
            call()
        message = str(info.value)
        assert "google/siglip2-giant-opt-patch16-384" in message
        assert "text_weights={'siglip2-g'" in message
    assert not enc.is_loaded


def test_siglip2_bad_weights_dir(tmp_path, tiny_siglip2):
    enc = SigLIP2TextEncoder("siglip2-g-384", weights=tmp_path / "missing", teacher_name="s")
    with pytest.raises(TextWeightsUnavailableError, match="missing"):
        enc.load()
    # A directory with the config but no weights file.
    _, folder = tiny_siglip2
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(TextWeightsUnavailableError, match="partial"):
        SigLIP2TextEncoder("siglip2-g-384", weights=partial).load()
    # A checkpoint without the text weights is refused instead of randomly initialized.
    ref, _ = tiny_siglip2
    vision_only = tmp_path / "vision_only"
    ref.save_pretrained(
        vision_only, state_dict={k: v for k, v in ref.state_dict().items() if "text" not in k}
    )
    with pytest.raises(ValueError, match="does not hold the SigLIP2 text model"):
        SigLIP2TextEncoder("siglip2-g-384", weights=vision_only).load()


def test_build_text_encoder_other_types():
    for teacher_type in ("generic", "dino_v2", "sam", None):
        assert build_text_encoder({"name": "x", "type": teacher_type, "model": "m"}) is None
    with pytest.raises(ValueError, match="'clip'.*model"):
        build_text_encoder({"name": "clip", "type": "open_clip", "pretrained": "dfn5b"})


def test_adaptor_exposes_its_text_tower(tiny_clips):
    """An adaptor with a text tower has tokenizer/encode_text and the tower as ``oc_model``, as in the original."""
    from radio.adaptors import Adaptor

    ref, path = tiny_clips[TINY_CLIP]
    enc = OpenClipTextEncoder(TINY_CLIP, str(path), teacher_name="clip")
    ad = Adaptor("clip", 0, torch.nn.Identity(), torch.nn.Identity(), text=enc).eval()
    assert hasattr(ad, "tokenizer") and hasattr(ad, "encode_text") and not hasattr(ad, "text_model")
    tokens = ad.tokenizer(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(ad.encode_text(tokens, normalize=True), ref.encode_text(tokens, normalize=True),
                                   rtol=0, atol=ATOL)
    assert ad.oc_model is enc.oc_model
