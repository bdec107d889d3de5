"""Tiny random models of eight Hugging Face architectures, each with its family's tokenizer conventions and a
chat template that behaves like the family's own — built offline, for the architecture tests.

What each family brings that a Llama-only test suite would miss:

- ``gpt2``: learned positions, fused ``c_attn`` / ``Conv1D`` layers, dropout 0.1 in its config, no pad token
  (rlft pads with EOS), ``<|endoftext|>`` as BOS, EOS and end of turn;
- ``qwen2``: ChatML (``<|im_end|>`` ends a turn, EOS is ``<|endoftext|>``, which is also the pad token), qkv
  bias, a default system message;
- ``qwen3``: ChatML with thinking blocks that are stripped from earlier assistant turns (the template does
  not render incrementally), ``enable_thinking``, q/k norms;
- ``gemma2``: ``<bos>`` added by the tokenizer and written by the template, ``<end_of_turn>``, logit
  soft-capping, alternating sliding-window layers;
- ``gemma3``: the text model with a sliding window on most layers, system text folded into the first turn;
- ``phi3``: fused ``qkv_proj`` / ``gate_up_proj``, pad token = EOS, a template that appends EOS after the
  last message (not incremental either), ``<|end|>`` ends a turn;
- ``mistral``: ``[INST]`` markup, a sliding window shorter than the test sequences, no pad token;
- ``llama3``: untied embeddings, header tokens, ``<|eot_id|>`` ends a turn, generation config EOS ids
  ``[<|end_of_text|>, <|eot_id|>]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rlft.models import default_corpus, save_pretrained_atomic

GPT2_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Assistant turns after the last user message carry a <think> block (empty if the message has none);
# earlier ones lose theirs, as in the Qwen3 family's own template.
QWEN3_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- set content = m['content'] -%}{%- set reasoning = '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_user -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}{%- set first = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set rest = messages[1:] -%}{%- else -%}{%- set first = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- for m in rest -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + m['content'] + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

PHI3_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
    "{% else %}{{ '[SYS] ' + m['content'] + ' [/SYS]' }}{% endif %}{% endfor %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One architecture family: its special tokens, tokenizer conventions, chat template and tiny config."""

    name: str
    config_class: str
    config: dict[str, Any]
    specials: tuple[str, ...]
    template: str
    eos: str
    bos: str | None = None
    pad: str | None = None  # None: the tokenizer has no pad token (rlft pads with EOS)
    add_bos: bool = False  # the tokenizer prepends BOS to plain text
    end_of_turn: str | None = None  # the token that ends an assistant turn, when it is not EOS
    generation_eos: tuple[str, ...] = ()  # generation_config.eos_token_id, when set beyond EOS
    model_class: str = "AutoModelForCausalLM"
    extra: dict[str, Any] = field(default_factory=dict)


_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "gpt2",
            "GPT2Config",
            {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256},  # dropouts keep GPT-2's 0.1
            ("<|endoftext|>",),
            GPT2_TEMPLATE,
            eos="<|endoftext|>",
            bos="<|endoftext|>",
        ),
        Family(
            "qwen2",
            "Qwen2Config",
            {**_SMALL, "num_key_value_heads": 1, "tie_word_embeddings": True},
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            QWEN2_TEMPLATE,
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            end_of_turn="<|im_end|>",
        ),
        Family(
            "qwen3",
            "Qwen3Config",
            {**_SMALL, "num_key_value_heads": 1, "head_dim": 16, "tie_word_embeddings": True},
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
            QWEN3_TEMPLATE,
            eos="<|im_end|>",
            pad="<|endoftext|>",
        ),
        Family(
            "gemma2",
            "Gemma2Config",
            {
                **_SMALL,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                "sliding_window": 6,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
            GEMMA_TEMPLATE,
            eos="<eos>",
            bos="<bos>",
            pad="<pad>",
            add_bos=True,
            end_of_turn="<end_of_turn>",
        ),
        Family(
            "gemma3",
            "Gemma3TextConfig",
            {
                **_SMALL,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                "sliding_window": 6,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
            GEMMA_TEMPLATE,
            eos="<eos>",
            bos="<bos>",
            pad="<pad>",
            add_bos=True,
            end_of_turn="<end_of_turn>",
            generation_eos=("<eos>", "<end_of_turn>"),
        ),
        Family(
            "phi3",
            "Phi3Config",
            {**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": False},
            ("<s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"),
            PHI3_TEMPLATE,
            eos="<|endoftext|>",
            bos="<s>",
            pad="<|endoftext|>",
            add_bos=True,
            end_of_turn="<|end|>",
        ),
        Family(
            "mistral",
            "MistralConfig",
            {**_SMALL, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 6},
            ("<s>", "</s>"),
            MISTRAL_TEMPLATE,
            eos="</s>",
            bos="<s>",
            add_bos=True,
        ),
        Family(
            "llama3",
            "LlamaConfig",
            {**_SMALL, "num_key_value_heads": 1, "tie_word_embeddings": False},
            (
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ),
            LLAMA3_TEMPLATE,
            eos="<|end_of_text|>",
            bos="<|begin_of_text|>",
            add_bos=True,
            end_of_turn="<|eot_id|>",
            generation_eos=("<|end_of_text|>", "<|eot_id|>"),
        ),
    )
}

ARCHITECTURES = tuple(FAMILIES)


def family_corpus() -> list[str]:
    """Plain English, arithmetic and chat-like lines, enough for a few hundred BPE merges."""
    chat = [f"user: what is {a} plus {b}? assistant: {a + b}" for a in range(10) for b in range(10)]
    return default_corpus(300) + chat


def family_tokenizer(family: Family, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``family``'s special tokens, BOS convention and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(family_corpus(), trainer=trainer)
    if family.add_bos:
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=family.eos,
        bos_token=family.bos,
        pad_token=family.pad,
        additional_special_tokens=[
            s for s in family.specials if s not in {family.eos, family.bos, family.pad}
        ],
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = family.template
    return tokenizer


def family_model(family: Family, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Any:
    """A random float32 tiny model of ``family`` for ``tokenizer``, weights moved off their initial values
    (so tied/untied heads, norms and biases all carry signal), in eval mode."""
    config_class = getattr(transformers, family.config_class)
    ids = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family.name != "gpt2":
        ids["max_position_embeddings"] = 256
    config = config_class(**family.config, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    gen = model.generation_config
    gen.eos_token_id = (
        [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]
        if family.generation_eos
        else tokenizer.eos_token_id
    )
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def build_family(name: str, out: Path, seed: int = 0) -> Path:
    """Build and save (HF format) the tiny model and tokenizer of family ``name`` under ``out``."""
    family = FAMILIES[name]
    tokenizer = family_tokenizer(family)
    return save_pretrained_atomic(family_model(family, tokenizer, seed), tokenizer, out)


def build_zoo(root: Path, names: tuple[str, ...] = ARCHITECTURES) -> dict[str, Path]:
    """Every family's model directory under ``root`` (``root/<name>``)."""
    return {name: build_family(name, Path(root) / name) for name in names}


ZooBuilder = Callable[[str], Path]
