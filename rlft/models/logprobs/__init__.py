"""Log-probabilities of tokens under a causal LM: every path rlft scores text with.

- :mod:`.head` — the one chunked LM-head loop ``z[y]/τ − logsumexp(z/τ)`` (and entropies), float32;
- :mod:`.tokens` — per-token log-probs of whole sequences through the model's own body (the plain
  reference path), and of responses after prompts on it;
- :mod:`.responses` — log-probs of sampled responses (online RL): shared prompts run once, the fused
  Llama forward when the model qualifies, only the positions that carry loss go through the head;
- :mod:`.sequences` — summed log-probs of completions (DPO family, KTO, RRHF), prompts shared by a group.

All take tensors (ids, masks, group ids) and an explicit ``bf16`` switch; none reads trainer objects.
"""

from ..lm_head import apply_lm_head
from ..positions import position_ids_from_mask
from .head import head_logprobs
from .responses import Responses, logprobs_from_states, response_states, rollout_logprobs
from .sequences import GroupedRows, grouped_logprob_sums, layout_groups, sequence_logprob_sums
from .tokens import hidden_states, response_logprobs, token_logprobs

__all__ = [
    "GroupedRows",
    "Responses",
    "apply_lm_head",
    "grouped_logprob_sums",
    "head_logprobs",
    "hidden_states",
    "layout_groups",
    "logprobs_from_states",
    "position_ids_from_mask",
    "response_logprobs",
    "response_states",
    "rollout_logprobs",
    "sequence_logprob_sums",
    "token_logprobs",
]
