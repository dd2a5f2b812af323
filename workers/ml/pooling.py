"""Pooling shared by encoding, training and attacks, so all three embed text the same way."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, *, mode: str = "mean") -> torch.Tensor:
    """Token states (b, t, d) -> sentence vectors (b, d), padding masked out."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def embed_hidden(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mode: str = "mean",
    normalize: bool = True,
) -> torch.Tensor:
    vectors = pool(hidden.float(), attention_mask, mode=mode)
    return F.normalize(vectors, p=2, dim=-1) if normalize else vectors
