"""The LM head: hidden rows → logits, with the post-head transforms some model families apply.

A leaf module (torch only), so the sampler's decoders and the fused paths can use it without importing the
log-prob functions that in turn use them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel


def apply_lm_head(model: PreTrainedModel, hidden: Tensor) -> Tensor:
    """Logits for ``hidden`` rows: the output embedding plus the few logit transforms HF models apply.

    Covers the plain head (Llama, Qwen, Mistral, GPT-2, …) and the post-head scalings some families
    add in their ``forward`` (Gemma 2/3 soft-capping, Cohere ``logit_scale``, Granite ``logits_scaling``).
    """
    logits: Tensor = model.get_output_embeddings()(hidden)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    divide = getattr(config, "logits_scaling", None)
    if isinstance(divide, (int, float)) and divide != 1:
        logits = logits / divide
    return logits
