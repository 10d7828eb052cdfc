"""Grouped-query attention without key/value copies: same results as transformers' SDPA path,
switched on only where it applies, and always switched back."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rome_fast.model.attention import GROUPED, grouped_kv_attention, sdpa_grouped
from tests.models import pretrained, tiny_model

CPU = torch.device("cpu")
# a left-padded batch: transformers passes SDPA a mask, so it copies the key/value heads
PADDED = {
    "input_ids": torch.tensor([[464, 412, 733, 9096, 318], [0, 0, 1212, 318, 257]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]),
}


def attention_module() -> torch.nn.Module:
    """tiny-llama's first attention: 4 query heads sharing 2 key/value heads."""
    loaded = tiny_model("tiny-llama")
    attention = loaded.model.get_submodule("model.layers.0.self_attn")
    assert attention.num_key_value_groups == 2
    return attention


def qkv(q_len: int, k_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(3, 4, q_len, 16, generator=g)  # (B, H, T_q, d_head)
    key, value = (torch.randn(3, 2, k_len, 16, generator=g) for _ in range(2))  # (B, H_kv, ...)
    return query, key, value


def padded_causal_mask(q_len: int, k_len: int) -> torch.Tensor:
    """(B, 1, T_q, T_k) bool: queries at the last T_q positions, row b left-padded by b."""
    offset = k_len - q_len
    causal = torch.arange(k_len)[None, :] <= torch.arange(q_len)[:, None] + offset
    mask = causal[None, None].repeat(3, 1, 1, 1)
    for b in range(3):
        mask[b, ..., :b] = False
    return mask


# Without a mask, a query shorter than its keys goes to transformers' own path: not compared.
@pytest.mark.parametrize(("q_len", "k_len", "masked"), [(5, 5, True), (3, 8, True), (5, 5, False)])
def test_grouped_equals_transformers_sdpa(q_len: int, k_len: int, masked: bool) -> None:
    module = attention_module()
    query, key, value = qkv(q_len, k_len)
    mask = padded_causal_mask(q_len, k_len) if masked else None
    ours, _ = sdpa_grouped(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == (3, q_len, 4, 16)
    torch.testing.assert_close(ours, theirs)


def test_grouped_equals_transformers_sdpa_in_the_backward_pass() -> None:
    module = attention_module()
    mask = padded_causal_mask(3, 8)
    grads = []
    for attend in (sdpa_grouped, sdpa_attention_forward):
        query, key, value = (t.requires_grad_(True) for t in qkv(3, 8))
        out, _ = attend(module, query, key, value, mask, scaling=0.25)
        grads.append(torch.autograd.grad(out.square().sum(), [query, key, value]))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_a_grouped_model_switches_on_the_cpu_and_back() -> None:
    loaded = tiny_model("tiny-llama")
    config = pretrained(loaded).config
    with torch.no_grad():
        plain = loaded.model(**PADDED).logits
        with grouped_kv_attention(loaded.model, CPU):
            assert config._attn_implementation == GROUPED
            grouped = loaded.model(**PADDED).logits
    assert config._attn_implementation == "sdpa"
    torch.testing.assert_close(grouped, plain)


def test_the_switch_is_undone_on_error() -> None:
    loaded = tiny_model("tiny-llama")
    with pytest.raises(RuntimeError, match="boom"), grouped_kv_attention(loaded.model, CPU):
        raise RuntimeError("boom")
    assert pretrained(loaded).config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("family", "device"),
    [("tiny-gpt2", CPU), ("tiny-neox", CPU), ("tiny-llama", torch.device("cuda"))],
)
def test_left_alone_without_grouped_heads_or_off_the_cpu(family: str, device: torch.device) -> None:
    """Models without grouped heads need no switch; CUDA's fused kernels refuse a mask with
    grouped heads, so there transformers' own path stays."""
    config = pretrained(tiny_model(family)).config
    before = config._attn_implementation
    with grouped_kv_attention(tiny_model(family).model, device):
        assert config._attn_implementation == before
