"""The micro Llama the trainer tests share: 2 layers, width 32, a tokenizer trained on a built-in task's
corpus — small enough for many short training runs per test file."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlft.data import get_task
from rlft.models import save_pretrained_atomic, train_tokenizer


def save_micro_llama(out: Path, task: str, corpus_size: int, vocab_size: int, seed: int = 0) -> str:
    """Build the micro Llama for ``task``'s vocabulary, save it (HF format) to ``out``, return the path."""
    tokenizer = train_tokenizer(
        get_task(task).corpus(corpus_size), vocab_size=vocab_size, model_max_length=64
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return str(save_pretrained_atomic(model.eval(), tokenizer, out))


def perturbed_llama(seed: int = 0, **changes) -> LlamaForCausalLM:
    """An in-memory 2-layer, 32-wide Llama (vocabulary 61) with every weight, norms included, moved away
    from its initial value — so that folding norm weights or a wrong scale would show in the numbers."""
    settings = {
        "vocab_size": 61,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **changes})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model
