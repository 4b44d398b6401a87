"""A grouped-query-aware sdpa for branch masks on the CPU.

transformers' ``sdpa`` path repeats the KV heads of a grouped-query model
(``repeat_kv``: a copy of the whole cache, every layer, every step) whenever
an explicit attention mask is given, which is every parallel step. On the CPU,
torch's ``scaled_dot_product_attention`` takes ``enable_gqa=True`` together
with an additive mask and gives bit-identical results without the copy. This
module registers that path as the attention implementation ``"pbd_sdpa"``;
everything it does not need to handle (no mask, no grouped heads, softcapping,
attention sinks, position biases) goes to transformers' own ``sdpa`` function.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

NAME = "pbd_sdpa"
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")


def gqa_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, heads, q, d]
    key: torch.Tensor,  # [B, kv_heads, kv, d]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # additive [B, 1, q, kv]
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if attention_mask is None or not grouped or any(kwargs.get(name) is not None for name in _UNSUPPORTED_KWARGS):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask[:, :, :, : key.shape[-2]],
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None  # [B, q, heads, d]


def register() -> str:
    """Make ``"pbd_sdpa"`` known to transformers (idempotent); returns its name."""
    AttentionInterface.register(NAME, gqa_sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return NAME
