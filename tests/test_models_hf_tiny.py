"""Tiny offline models, tokenizer and atomic save/load round trips (rlft.models.tiny, rlft.models.hf)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.models import (
    TINY_SIZES,
    ModelError,
    NonFiniteWeightsError,
    build_tiny_model,
    default_corpus,
    ensure_padding,
    init_tiny_model,
    load_causal_lm,
    load_tokenizer,
    save_pretrained_atomic,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def test_tokenizer_special_tokens_and_left_padding(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.padding_side == "left"
    assert len(tokenizer) <= 512


def test_tokenizer_splits_every_digit(tokenizer):
    assert tokenizer.tokenize("12+345=357") == ["1", "2", "+", "3", "4", "5", "=", "3", "5", "7"]
    # digits never merge with spaces or letters either
    for token in tokenizer.tokenize("what is 1234 plus 99? x7 7x 007"):
        assert not any(c.isdigit() for c in token) or len(token) == 1


def test_tokenizer_round_trips_text(tokenizer):
    text = "the cat sees 12 birds. Ünïcode ✓ and\nnewlines"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_renders_with_generation_prompt(tokenizer):
    messages = [{"role": "user", "content": "what is 2+3?"}, {"role": "assistant", "content": "5"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\nwhat is 2+3?</s>\n<|assistant|>\n5</s>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nwhat is 2+3?</s>\n<|assistant|>\n"
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 2  # the EOS marker becomes the EOS id


def test_default_corpus_is_deterministic_and_has_arithmetic():
    lines = default_corpus()
    assert lines == default_corpus() and len(lines) >= 200
    a, b = lines[0].split("=")[0].split("+")
    assert lines[0] == f"{a}+{b}={int(a) + int(b)}"


def test_tiny_sizes_parameter_counts(tokenizer):
    counts = {
        name: sum(p.numel() for p in init_tiny_model(name, tokenizer).parameters()) for name in ("1m", "4m")
    }
    assert 0.8e6 < counts["1m"] < 1.5e6
    assert 3e6 < counts["4m"] < 5e6
    # the bigger ones, from the shapes alone (building them is slow for a unit test)
    v = 512
    for name, (lo, hi) in {"15m": (12e6, 16e6), "50m": (45e6, 55e6)}.items():
        s = TINY_SIZES[name]
        n = v * s.hidden + s.layers * (4 * s.hidden**2 + 3 * s.hidden * s.intermediate)
        assert lo < n < hi


def test_init_is_seeded_float32_tied_and_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = init_tiny_model("1m", tokenizer, seed=7)
    assert torch.equal(torch.rand(3), expected)
    b = init_tiny_model("1m", tokenizer, seed=7)
    c = init_tiny_model("1m", tokenizer, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()
    assert a.dtype == torch.float32 and a.config.model_type == "llama"


def test_unknown_size_names_the_valid_ones(tokenizer):
    with pytest.raises(
        ModelError, match=r"unknown tiny model size '3b' \(expected one of 1m, 4m, 15m, 50m\)"
    ):
        init_tiny_model("3b", tokenizer)
    with pytest.raises(ModelError, match="unknown tiny model size"):
        build_tiny_model("/nonexistent/never", size="huge")


def test_missing_dir_is_a_named_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(
        ModelError, match=r"no model at .*nope \(expected a Hugging Face model directory or hub id\)"
    ):
        load_causal_lm(str(missing))
    with pytest.raises(ModelError, match="no model at"):
        load_tokenizer(str(missing))


def test_build_save_reload_gives_identical_logits(tmp_path, tokenizer):
    out = build_tiny_model(tmp_path / "tiny", size="1m", seed=3)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.tokenize("12+34") == ["1", "2", "+", "3", "4"]
    assert (
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|user|>\nhi</s>\n"
    )
    ours = load_causal_lm(str(out))
    ids = torch.tensor([tok("7+8=15 the cat")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ours(ids).logits)
    # an in-memory model saved and reloaded computes the same logits
    fresh = init_tiny_model("1m", tokenizer, seed=5)
    save_pretrained_atomic(fresh, tokenizer, tmp_path / "again")
    reloaded = load_causal_lm(str(tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, reloaded(ids).logits)
    assert load_tokenizer(str(tmp_path / "again")).padding_side == "left"


def test_save_replaces_existing_dir_and_leaves_no_temp(tmp_path, tokenizer):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_pretrained_atomic(init_tiny_model("1m", tokenizer), tokenizer, target)
    assert not (target / "stale.txt").exists()
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_failed_save_keeps_old_checkpoint(tmp_path, tokenizer):
    target = tmp_path / "ckpt"
    save_pretrained_atomic(init_tiny_model("1m", tokenizer, seed=1), tokenizer, target)
    before = (target / "model.safetensors").read_bytes()

    class Broken:
        def state_dict(self):
            return {}

        def save_pretrained(self, path, **kwargs):
            (path / "partial.bin").write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(Broken(), tokenizer, target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_never_saved(tmp_path, tokenizer, bad):
    target = tmp_path / "ckpt"
    save_pretrained_atomic(init_tiny_model("1m", tokenizer, seed=1), tokenizer, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    model = init_tiny_model("1m", tokenizer, seed=2)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, :3] = bad
    with pytest.raises(NonFiniteWeightsError) as err:
        save_pretrained_atomic(model, tokenizer, target)
    message = str(err.value)
    assert "model.layers.1.mlp.up_proj.weight holds 3 non-finite values" in message and "\n" not in message
    assert isinstance(err.value, ValueError) and str(target) in message
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old checkpoint, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(NonFiniteWeightsError):
        save_pretrained_atomic(model, tokenizer, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_ensure_padding_reuses_eos(tokenizer):
    tok = train_tokenizer(default_corpus(50))
    tok.pad_token = None
    assert tok.pad_token_id is None
    ensure_padding(tok)
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"
