"""Measuring a model honestly. This is the only copy of each metric: training's validation
pass, `poetvae evaluate` and the tests all call these functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from poetvae.model import PoetVAE
from poetvae.vocab import SEQ_LEN


@torch.no_grad()
def elbo_terms(model: PoetVAE, tokens: Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Mean per-poem reconstruction, KL and negative ELBO (beta = 1, no free bits, z sampled
    once from q(z|x)), and perplexity per token position (20 characters + <eos> = 21 per
    poem whatever the tokenizer, so char and word models compare)."""
    was_training = model.training
    model.eval()
    rec_sum = kl_sum = 0.0
    n = tokens.size(0)
    for i in range(0, n, batch_size):
        batch = tokens[i : i + batch_size]
        terms = model.loss(batch, model(batch))
        rec_sum += terms["rec"].sum().item()
        kl_sum += terms["kl"].sum().item()
    model.train(was_training)
    if n == 0:
        return {}
    rec, kl = rec_sum / n, kl_sum / n
    return {"rec": rec, "kl": kl, "nelbo": rec + kl, "ppl": math.exp((rec + kl) / SEQ_LEN), "poems": n}
