"""The frozen reference's fused body (weights packed once) against the per-call fused forward and the
model's own forward, for both layouts, grouped-query attention, biases and bfloat16."""

from __future__ import annotations

import pytest
import torch
from micro_models import perturbed_llama

from rlft.models.fused.frozen import FrozenForward
from rlft.models.fused.llama_forward import SharedPrompts, fused_hidden_rows, fused_hidden_states


def shared_prompts_rows() -> tuple[torch.Tensor, torch.Tensor, SharedPrompts]:
    """2 prompts (lengths 5 and 3, width 5) and 3 completions of width 4: 0 and 2 continue prompt 0."""
    g = torch.Generator().manual_seed(1)
    group, lengths = torch.tensor([0, 1, 0]), torch.tensor([5, 3])
    layout = SharedPrompts(2, 5, 3, 4, group, lengths)
    ids = torch.randint(3, 61, (2 * 5 + 3 * 4,), generator=g)
    positions = torch.cat(
        [torch.arange(5).repeat(2), (lengths[group][:, None] + torch.arange(4)).reshape(-1)]
    )
    return ids, positions, layout


@pytest.mark.parametrize(
    "changes", [{}, {"num_key_value_heads": 2}, {"attention_bias": True}], ids=["mha", "gqa", "bias"]
)
def test_frozen_forward_computes_the_fused_forward(changes) -> None:
    model = perturbed_llama(**changes)
    frozen = FrozenForward(model)
    ids, positions, layout = shared_prompts_rows()
    with torch.no_grad():
        expected = fused_hidden_rows(model, ids, positions, layout)
        torch.testing.assert_close(frozen.hidden_rows(ids, positions, layout), expected, rtol=0, atol=2e-5)
        rows = torch.randint(3, 61, (3, 9), generator=torch.Generator().manual_seed(2))
        plain = frozen.hidden_rows(rows.reshape(-1), torch.arange(9).repeat(3), (3, 9)).view(3, 9, -1)
        torch.testing.assert_close(plain, fused_hidden_states(model, rows), rtol=0, atol=2e-5)
        # … which is the model's own body (final norm included)
        own = model.get_decoder()(input_ids=rows).last_hidden_state
        torch.testing.assert_close(plain, own, rtol=0, atol=2e-5)


def test_frozen_forward_in_bfloat16_stays_close_and_packs_once() -> None:
    model = perturbed_llama()
    ids, positions, layout = shared_prompts_rows()
    frozen = FrozenForward(model, bf16=True)
    with torch.no_grad():
        exact = fused_hidden_rows(model, ids, positions, layout)
        half = frozen.hidden_rows(ids, positions, layout)
        error = float((half - exact).abs().max())
        assert 0 < error < 0.1 * float(exact.abs().max())  # bfloat16 matmuls really ran
        # the weights were packed at construction: changing the model afterwards changes nothing
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)
        assert torch.equal(frozen.hidden_rows(ids, positions, layout), half)
