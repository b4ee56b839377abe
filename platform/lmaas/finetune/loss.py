"""The training loss both methods share: next-token cross-entropy on assistant tokens only.

Only positions whose target the loss sees go through the output head, so a long prompt
costs its forward through the decoder but nothing at the (vocabulary-sized) head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmaas.finetune.batching import IGNORE_INDEX, Batch

__all__ = ["causal_lm_loss"]


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the batch's target tokens (a Hugging Face causal LM)."""
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state
    keep = batch.targets != IGNORE_INDEX
    logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), batch.targets[keep])
