"""Hugging Face causal LMs for rlft: loading/saving, the offline tiny model, per-token log-probs and
fast batched sampling with a KV cache (behind the small :class:`Sampler` interface)."""

from .decoders import HFDecoder
from .errors import CustomCodeError, ModelError, NonFiniteWeightsError
from .forward_path import ForwardPlan, decoder_choice, forward_plan, plan_for, record_forward
from .fused.llama_decoder import FastLlamaDecoder, fast_path_blocker
from .hf import (
    ensure_padding,
    load_causal_lm,
    load_tokenizer,
    parse_dtype,
    save_pretrained_atomic,
    training_mode,
)
from .kv_cache import GrowableLayer, make_cache
from .logprobs import apply_lm_head, position_ids_from_mask, response_logprobs, token_logprobs
from .sampling import (
    HFSampler,
    Rollout,
    Sampler,
    SamplingParams,
    encode_prompts,
    filter_logits,
    make_decoder,
    pick_tokens,
    sample,
)
from .scalar_head import (
    load_reward_model,
    reward_model_from_causal_lm,
    save_reward_model,
    sequence_scores,
    token_values,
)
from .stopping import StopStrings, truncate_at_stop
from .tiny import (
    CHAT_TEMPLATE,
    TINY_SIZES,
    TinySize,
    build_tiny_model,
    default_corpus,
    init_tiny_model,
    tiny_config,
    train_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "TINY_SIZES",
    "CustomCodeError",
    "FastLlamaDecoder",
    "ForwardPlan",
    "GrowableLayer",
    "HFDecoder",
    "HFSampler",
    "ModelError",
    "NonFiniteWeightsError",
    "Rollout",
    "Sampler",
    "SamplingParams",
    "StopStrings",
    "TinySize",
    "apply_lm_head",
    "build_tiny_model",
    "decoder_choice",
    "default_corpus",
    "encode_prompts",
    "ensure_padding",
    "fast_path_blocker",
    "filter_logits",
    "forward_plan",
    "init_tiny_model",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "make_cache",
    "make_decoder",
    "parse_dtype",
    "pick_tokens",
    "plan_for",
    "position_ids_from_mask",
    "record_forward",
    "response_logprobs",
    "reward_model_from_causal_lm",
    "sample",
    "save_pretrained_atomic",
    "save_reward_model",
    "sequence_scores",
    "tiny_config",
    "token_logprobs",
    "token_values",
    "train_tokenizer",
    "training_mode",
    "truncate_at_stop",
]
