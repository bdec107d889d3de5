"""Position ids for left-padded rows (a leaf module: the sampler, the fused paths and the log-probs share it)."""

from __future__ import annotations

from torch import Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that ignore left padding: cumsum(mask) − 1, clamped at 0 (pads get position 0).

    With these, a left-padded row sees exactly the positions it would see unpadded, so results do not
    depend on how much padding the batch needed.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
