"""Tiny float32 models for the vLLM engine tests: a tied and an untied Llama, a Qwen2 and a GPT-2, each with its
family's tokenizer. vLLM's CPU attention takes head sizes of 32 and up, so these are wider than the
architecture zoo's 16-wide heads (tests/arch_zoo.py, whose tokenizers and weight perturbation they reuse)."""

from __future__ import annotations

import dataclasses

import torch
from arch_zoo import FAMILIES, family_model, family_tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlft.models import init_tiny_model, train_tokenizer

_WIDE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}

# Family name in tests/arch_zoo.py and the config that replaces its own (head size 32).
_ZOO: dict[str, tuple[str, dict[str, object]]] = {
    "llama_untied": ("llama3", {**_WIDE, "num_key_value_heads": 1, "tie_word_embeddings": False}),
    "qwen2": ("qwen2", {**_WIDE, "num_key_value_heads": 1, "tie_word_embeddings": True}),
    "gpt2": ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 256}),
}

CASES = ("llama_tied", "llama_untied", "qwen2", "gpt2")

# What every case's prompts look like to its tokenizer: short text, different lengths (left padding).
PROMPTS = ["12+34=", "the cat sees a big dog and", "what is 7 plus 5?"]


def build_case(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The eval-mode model and tokenizer of case ``name``, every weight moved well off its initial value: a
    freshly initialised tiny model's greedy runs collapse onto one repeated token for every prompt."""
    if name == "llama_tied":  # rlft's own tiny Llama (tied embeddings, 4 heads of 32)
        tokenizer = train_tokenizer()
        model = init_tiny_model("1m", tokenizer, seed=seed)
    else:
        family_name, config = _ZOO[name]
        family = dataclasses.replace(FAMILIES[family_name], config=config)
        tokenizer = family_tokenizer(family)
        model = family_model(family, tokenizer, seed)
    perturb(model, 0.1, seed=100 + seed)
    return model, tokenizer


def layer_prefix(name: str, index: int) -> str:
    """The Hugging Face name prefix of decoder layer ``index`` in case ``name``."""
    return f"transformer.h.{index}." if name == "gpt2" else f"model.layers.{index}."


def perturb(model: PreTrainedModel, scale: float, seed: int) -> None:
    """Move every weight by ``scale`` × N(0, 1) noise (a stand-in for an optimiser step)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
