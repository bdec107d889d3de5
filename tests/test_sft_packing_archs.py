"""Packed SFT is exact on every architecture it accepts, and refused in one line where it cannot be.

Packing used to hand the model a 4-D boolean block mask. transformers uses a 4-D mask as given, so
sliding-window layers (Gemma 2/3, Mistral) lost their window, and eager attention (Gemma 2's default)
adds the mask to the scores, so a boolean one masked nothing: packed examples saw each other and the
future. Those losses were only slightly off, which is why each family here is checked against its own
unpacked batch, loss and gradients, with examples longer than the zoo's sliding window (6 tokens).
"""

from __future__ import annotations

import types

import pytest
import torch
from arch_zoo import ARCHITECTURES, FAMILIES, family_model, family_tokenizer

from rlft.data import IGNORE_INDEX, Example
from rlft.models import save_pretrained_atomic, training_mode
from rlft.run import ConfigError
from rlft.train import SFTConfig
from rlft.train.sft.trainer import packing_blocker, step_batches, token_loss_sum

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW = 6
MAX_LEN = 32
# Rows of 2-3 examples, nearly all longer than the window, with a padding tail in most rows and one
# example shorter than the window (a window must not cut what it never reaches).
LENGTHS = (9, 13, 7, 15, 11, 5, 12, 14, 10)
RTOL = 1e-5  # float32 rounding between two mask layouts stays ~1e-7 relative


@pytest.fixture(scope="module")
def zoo():
    """name → (model in training mode, pad id), built once per module: the tokenizer's BPE training
    is most of a family's cost."""
    built: dict[str, tuple[torch.nn.Module, int]] = {}

    def get(name: str) -> tuple[torch.nn.Module, int]:
        if name not in built:
            tokenizer = family_tokenizer(FAMILIES[name])
            # training_mode: the trainer's own setting (dropout off, use_cache left at the config's True,
            # which is what used to switch transformers' packed-sequence detection off)
            model = training_mode(family_model(FAMILIES[name], tokenizer))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            built[name] = (model, pad)
        return built[name]

    return get


def examples(vocab: int, seed: int = 0) -> list[Example]:
    """Random ids with a 3-token prompt whose labels are ignored, as completion-only SFT has."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append(Example(ids, [IGNORE_INDEX] * 3 + ids[3:]))
    return out


def batches(exs: list[Example], pad: int) -> tuple[dict, dict]:
    """(packed, unpacked) batch of the same examples, built by the trainer's own ``step_batches``."""
    order = torch.arange(len(exs))
    common = {"model": "m", "data": "d", "batch_size": len(exs), "grad_accum": 1}
    packed = step_batches(exs, order, 0, SFTConfig(**common, pack=True, max_len=MAX_LEN), pad)[0]
    unpacked = step_batches(exs, order, 0, SFTConfig(**common), pad)[0]
    return packed, unpacked


def mean_loss_and_grads(model, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total, n = token_loss_sum(model, batch)
    (total / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return (total / n).detach(), n, grads


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_packed_loss_and_gradients_equal_unpacked(zoo, name) -> None:
    model, pad = zoo(name)
    assert packing_blocker(model) is None
    packed, unpacked = batches(examples(model.config.vocab_size), pad)
    assert len(packed["seq_lens"]) < len(LENGTHS) and max(LENGTHS) > WINDOW  # packing, and the window bites
    loss_p, n_p, grads_p = mean_loss_and_grads(model, packed)
    loss_u, n_u, grads_u = mean_loss_and_grads(model, unpacked)
    assert n_p == n_u
    torch.testing.assert_close(loss_p, loss_u, rtol=RTOL, atol=0)
    assert grads_p.keys() == grads_u.keys() and len(grads_p) == len(list(model.parameters()))
    for key, expected in grads_u.items():
        # relative to the tensor's scale: elementwise rtol alone fails on entries that are ~0
        torch.testing.assert_close(
            grads_p[key], expected, rtol=RTOL, atol=RTOL * float(expected.abs().max()), msg=key
        )


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "mistral"])
def test_the_4d_mask_packing_used_to_pass_is_wrong_for_these_models(zoo, name) -> None:
    """What packing did before (4-D boolean block mask + position_ids): a different loss where eager
    attention adds the mask (gemma2) or a sliding window is ignored (gemma3, mistral) — so the test above
    would have failed. Random tiny models attend nearly uniformly, so the error is small (1e-4 to 1e-3
    relative), yet over ten times the tolerance the exact path meets."""
    model, pad = zoo(name)
    packed, unpacked = batches(examples(model.config.vocab_size), pad)
    with torch.no_grad():
        logits = model(
            input_ids=packed["input_ids"],
            attention_mask=packed["attention_mask"],
            position_ids=packed["position_ids"],
        ).logits[:, :-1]
        labels = packed["labels"][:, 1:]
        old = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        total, n = token_loss_sum(model, unpacked)
    assert abs(float(old) - float(total / n)) > 10 * RTOL * float(total / n)


def assert_one_line_refusal(message: str, model_type: str) -> None:
    assert "\n" not in message
    assert f"model_type {model_type!r}" in message and "'pack'" in message and "set pack: false" in message


@pytest.fixture(scope="module")
def bloom_dir(tmp_path_factory):
    """A tiny Bloom (ALiBi: positions come from the attention mask, and its forward takes no
    position_ids), which packing must refuse, saved with the GPT-2 family's tokenizer."""
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = family_tokenizer(FAMILIES["gpt2"])
    config = BloomConfig(vocab_size=len(tokenizer), hidden_size=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bloom") / "model"
    return save_pretrained_atomic(BloomForCausalLM(config).eval(), tokenizer, out)


def test_unverified_architectures_and_attention_are_refused_in_one_line(bloom_dir) -> None:
    from rlft.models import load_causal_lm

    bloom = load_causal_lm(str(bloom_dir))
    packed, unpacked = batches(examples(bloom.config.vocab_size), pad=0)
    with pytest.raises(ConfigError) as err:
        token_loss_sum(bloom, packed)
    assert_one_line_refusal(str(err.value), "bloom")
    assert torch.isfinite(token_loss_sum(bloom, unpacked)[0])  # unpacked stays available

    flex = types.SimpleNamespace(
        config=types.SimpleNamespace(model_type="llama", _attn_implementation="flex")
    )
    reason = packing_blocker(flex)
    assert reason is not None and "'llama'" in reason and "'flex'" in reason


def test_cli_refuses_packing_before_training(bloom_dir, tmp_path, capsys) -> None:
    import rlft.cli

    out = tmp_path / "run"
    argv = ["sft", "--out", str(out), "--no-progress", "--model", str(bloom_dir)]
    argv += ["--data", "task:arithmetic?max_operand=9&n=16", "--pack", "true", "--max_len", "48"]
    argv += ["--batch_size", "8", "--max_steps", "1", "--eval_samples", "4", "--torch_threads", "1"]
    assert rlft.cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlft: error: config key 'pack'")
    assert_one_line_refusal(err[-1], "bloom")
    assert "Traceback" not in "\n".join(err)
    assert not (out / "model").exists()
