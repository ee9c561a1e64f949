"""Constrained decoding: every poem that leaves the decoder is 4 lines x 5 Han characters.

The form is enforced inside the decoder, step by step, by masking what may not come
next, never by rejection or retries: at each step a token is allowed only if it is a
real token (no <pad>/<unk>/<bos>) that fits in what is left of the current line; once
20 characters are out, only <eos> is allowed, and after <eos> only <pad>. Whatever the
weights, the output is well formed.

The whole batch is decoded together: one decoder call per step for all poems, masks
precomputed once per vocabulary, no Python work per poem inside the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from poetvae.model import PoetVAE
from poetvae.vocab import BOS, CHARS_PER_LINE, EOS, PAD, POEM_CHARS, SEQ_LEN, UNK, Vocab


@dataclass(frozen=True)
class DecodeOptions:
    temperature: float = 1.0  # <1 sharper, >1 flatter
    top_k: int = 0  # keep only the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus sampling: smallest set with this much mass (1: all)
    greedy: bool = False  # argmax at every step

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise ValueError("temperature must be positive")
        if self.top_k < 0:
            raise ValueError("top_k must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


def allowed_by_room(token_chars: Tensor) -> Tensor:
    """(CHARS_PER_LINE + 2, V) bool: row r = tokens allowed when r characters are left in
    the current line (1..5); row 0 = the poem is complete (only <eos>); row 6 = finished
    (only <pad>)."""
    v = token_chars.numel()
    table = torch.zeros(CHARS_PER_LINE + 2, v, dtype=torch.bool)
    real = token_chars > 0
    real[UNK] = False  # <unk> is never written
    for room in range(1, CHARS_PER_LINE + 1):
        table[room] = real & (token_chars <= room)
    table[0, EOS] = True
    table[CHARS_PER_LINE + 1, PAD] = True
    return table


def _filter(logits: Tensor, opts: DecodeOptions) -> Tensor:
    """Temperature, top-k and top-p on already-masked logits (B, V)."""
    logits = logits / opts.temperature
    if opts.top_k > 0:
        kth = torch.topk(logits, min(opts.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= opts.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


@torch.no_grad()
def generate(model: PoetVAE, z: Tensor, vocab: Vocab, opts: DecodeOptions = DecodeOptions(),
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Decode a batch of latent codes z (B, Z) into token rows.

    Returns tokens (B, SEQ_LEN) in the layout of `Vocab.encode_batch`, and each poem's
    log-probability under the model (temperature 1, no masks), summed over its tokens.
    """
    device = z.device
    b = z.size(0)
    table = allowed_by_room(vocab.token_chars()).to(device)
    token_chars = vocab.token_chars().to(device)
    state = model.decoder.initial_state(z)
    prev = torch.full((b, 1), BOS, dtype=torch.long, device=device)
    written = torch.zeros(b, dtype=torch.long, device=device)  # characters out so far
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    out = torch.full((b, SEQ_LEN), PAD, dtype=torch.long, device=device)
    logprob = torch.zeros(b, device=device)
    for t in range(SEQ_LEN):
        logits, state = model.decode(z, prev, state)
        logits = logits[:, -1].float()  # (B, V)
        room = torch.where(written >= POEM_CHARS, 0, CHARS_PER_LINE - written % CHARS_PER_LINE)
        room = torch.where(finished, CHARS_PER_LINE + 1, room)
        masked = logits.masked_fill(~table[room], -math.inf)
        if opts.greedy:
            token = masked.argmax(dim=-1)
        else:
            probs = torch.softmax(_filter(masked, opts), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        step_logp = torch.log_softmax(logits, dim=-1).gather(1, token[:, None]).squeeze(1)
        logprob += torch.where(finished, 0.0, step_logp)
        out[:, t] = token
        written += token_chars[token]
        finished |= token == EOS
        prev = token[:, None]
    return out, logprob


def latent_path(za: Tensor, zb: Tensor, steps: int, method: str = "linear") -> Tensor:
    """(steps, Z) points from za to zb inclusive. slerp follows the great circle, which keeps
    the points at a norm typical of N(0, I) samples instead of cutting through the middle."""
    if steps < 2:
        raise ValueError("an interpolation needs at least 2 steps")
    t = torch.linspace(0, 1, steps, device=za.device)[:, None]
    if method == "linear":
        return (1 - t) * za + t * zb
    if method == "slerp":
        cos = torch.dot(za, zb) / (za.norm() * zb.norm()).clamp_min(1e-8)
        omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        if omega.abs() < 1e-4:
            return (1 - t) * za + t * zb
        return (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)
    raise ValueError(f"unknown interpolation method {method!r} (expected linear or slerp)")
