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
from typing import NamedTuple

import torch
from torch import Tensor

from poetvae.controls import BACKOFF_NAMES, Controls, ControlTables
from poetvae.form import FORM
from poetvae.model import PoetVAE, StepDecoder
from poetvae.vocab import BOS, EOS, PAD, UNK, Vocab


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


# |logit| below which exp(logit) is a normal fp32 number (e^-87 .. e^88) and a vocabulary of
# up to ~900,000 such terms still sums below the fp32 maximum: exp can then skip the shift
# by the row maximum that softmax makes.
EXP_SAFE = 75.0


def allowed_by_room(token_chars: Tensor) -> Tensor:
    """(FORM.chars_per_line + 2, V) bool: row r = tokens allowed when r characters are left in
    the current line (1..5); row 0 = the poem is complete (only <eos>); row 6 = finished
    (only <pad>)."""
    v = token_chars.numel()
    table = torch.zeros(FORM.chars_per_line + 2, v, dtype=torch.bool)
    real = token_chars > 0
    real[UNK] = False  # <unk> is never written
    for room in range(1, FORM.chars_per_line + 1):
        table[room] = real & (token_chars <= room)
    table[0, EOS] = True
    table[FORM.chars_per_line + 1, PAD] = True
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


class Generation(NamedTuple):
    ids: Tensor  # (B, FORM.seq_len) rows in the layout of Vocab.encode_batch
    logprob: Tensor  # (B,) log p(poem | z) under the model (temperature 1, no masks), nats
    backoff: Tensor  # (B, len(BACKOFF_NAMES)) bool: constraints relaxed somewhere in the poem


class _Rows:
    """Everything per row that decoding carries from step to step, so that beam search can
    reorder it all with one index."""

    def __init__(self, step: StepDecoder, model: PoetVAE, z: Tensor, tables: ControlTables | None):
        b, device = z.size(0), z.device
        self.z_gates = step.z_gates(z)
        self.hc = model.decoder.initial_state(z)
        self.prev = torch.full((b,), BOS, dtype=torch.long, device=device)
        self.written = torch.zeros(b, dtype=torch.long, device=device)  # characters out so far
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.out = torch.full((b, FORM.seq_len), PAD, dtype=torch.long, device=device)
        self.logprob = torch.zeros(b, device=device)
        self.ctl = (
            tables.initial_state(b)
            if tables
            else {"backoff": torch.zeros(b, len(BACKOFF_NAMES), dtype=torch.bool, device=device)}
        )

    def select(self, index: Tensor) -> None:
        self.z_gates, self.prev = self.z_gates[index], self.prev[index]
        self.hc = (self.hc[0][:, index], self.hc[1][:, index])
        self.written, self.finished = self.written[index], self.finished[index]
        self.out, self.logprob = self.out[index], self.logprob[index]
        self.ctl = {k: v[index] for k, v in self.ctl.items()}


class _Mask:
    """What may come next, in the cheapest form that says it: when every row is at the same
    point of the form (always so for a character vocabulary without controls), one list of
    forbidden columns for the whole batch; otherwise a (B, V) bool of allowed tokens."""

    def __init__(self, allowed: Tensor | None = None, forbidden: Tensor | None = None):
        self.allowed, self.forbidden = allowed, forbidden

    def fill_(self, x: Tensor, value: float) -> Tensor:
        """Set the forbidden entries of x (B, V) to value, in place."""
        if self.allowed is None:
            return x.index_fill_(1, self.forbidden, value)
        return x.masked_fill_(~self.allowed, value)

    def dense(self, like: Tensor) -> Tensor:
        """The allowed tokens as a (B, V) bool, for scores `like` (B, V)."""
        if self.allowed is not None:
            return self.allowed
        return torch.ones_like(like, dtype=torch.bool).index_fill_(1, self.forbidden, False)


class _FormTable:
    """The format constraint per `room` (characters left in the line, see allowed_by_room),
    as dense rows and as forbidden-column lists for a batch whose rows all have the same room."""

    def __init__(self, token_chars: Tensor, device: torch.device):
        self.table = allowed_by_room(token_chars).to(device)
        self.forbidden = [(~row).nonzero().squeeze(1) for row in self.table]

    def mask(self, rows: _Rows, tables: ControlTables | None) -> _Mask:
        room = torch.where(rows.written >= FORM.chars, 0, FORM.chars_per_line - rows.written % FORM.chars_per_line)
        room = torch.where(rows.finished, FORM.chars_per_line + 1, room)
        if tables is not None and bool(tables.active_at[rows.written.clamp(max=FORM.chars)].any()):
            return _Mask(tables.mask(self.table[room], rows.written, rows.ctl))
        lo, hi = torch.aminmax(room)
        if lo == hi:  # one host sync per step, to skip a (B, V) mask
            return _Mask(forbidden=self.forbidden[int(lo)])
        return _Mask(self.table[room])


def _by_block(x: Tensor, block: int, reduce: str) -> Tensor:
    """(B, V) -> (B, ceil(V / block)): `reduce` ("sum" or "amax") over each run of `block`
    columns, the last run possibly shorter."""
    b, v = x.shape
    whole = v // block * block
    parts = getattr(x[:, :whole].view(b, -1, block), reduce)(dim=2)
    if whole < v:
        parts = torch.cat([parts, getattr(x[:, whole:], reduce)(dim=1, keepdim=True)], dim=1)
    return parts


def _block_of(x: Tensor, which: Tensor, block: int, pad: float) -> Tensor:
    """(B, block): the entries of block `which` (B, 1) of each row, `pad` past the end."""
    index = which * block + torch.arange(block, device=x.device)
    return x.gather(1, index.clamp(max=x.size(1) - 1)).masked_fill_(index >= x.size(1), pad)


def _draw(weights: Tensor, u: Tensor, block: int = 64) -> tuple[Tensor, Tensor]:
    """One token per row, with probability proportional to weights (B, V) >= 0, by inverting
    the cumulative distribution at u (B, 1) uniform in [0, 1), in two levels: the block of
    `block` tokens from the running sums of block totals, then the token inside it.
    Returns the tokens and each row's total weight (a row of total 0 gets an arbitrary token).

    torch.multinomial draws V exponentials per row instead (70 % of decoding time on the
    CPU), and one running sum over all V is a slow sequential scan per row."""
    totals = _by_block(weights, block, "sum").double().cumsum(dim=1)  # (B, blocks)
    target = u * totals[:, -1:]  # below the row's total mass
    # right=True: the first running sum above the target, which never ends an empty block
    which = torch.searchsorted(totals, target, right=True).clamp_(max=totals.size(1) - 1)
    before = torch.where(which > 0, totals.gather(1, (which - 1).clamp(min=0)), 0.0)
    inside = _block_of(weights, which, block, 0.0).double().cumsum(dim=1)
    # the two sums round differently: keep the target inside the block, so that the first
    # running sum above it is a token of nonzero weight
    rest = torch.minimum((target - before).clamp(min=0), inside[:, -1:] * (1 - 1e-12))
    offset = torch.searchsorted(inside, rest, right=True)
    return (which * block + offset).squeeze(1).clamp_(max=weights.size(1) - 1), totals[:, -1]


def _argmax(x: Tensor, block: int = 64) -> tuple[Tensor, Tensor]:
    """Index and value of each row's largest entry (the first of equals), for x (B, V) >= 0.
    In two levels like _draw: torch.argmax is a scalar loop on the CPU, six times slower
    than the vectorised block maxima."""
    maxima = _by_block(x, block, "amax")
    which = maxima.argmax(dim=1, keepdim=True)  # the first block holding the maximum
    inside = _block_of(x, which, block, -1.0)
    return (which * block + inside.argmax(dim=1, keepdim=True)).squeeze(1), maxima.gather(1, which).squeeze(1)


def _uniform(b: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(b, 1, device=device, generator=generator, dtype=torch.float64)


def _choose(
    logits: Tensor,
    mask: _Mask,
    opts: DecodeOptions,
    u: Tensor | None,
    generator: torch.Generator | None,
    logit_bound: float = math.inf,
) -> tuple[Tensor, Tensor]:
    """One token per row from the masked distribution at the options' temperature, and its
    log-probability under the model itself (temperature 1, no masks). May overwrite logits.

    Every pass over (B, V) costs about the same here (memory-bound on the CPU), so there are
    few: one softmax serves both at temperature 1 (a second one when T != 1), then the block
    sums of the draw. When every logit is known to lie within +-logit_bound
    (model.StepDecoder.logit_bound) and that, divided by the temperature, is at most
    EXP_SAFE, exp needs no shift by the row maximum and there is no softmax at all."""
    filtered = opts.top_k > 0 or opts.top_p < 1.0
    scale = 1.0 if opts.greedy or filtered else 1.0 / opts.temperature
    if not filtered and logit_bound * max(scale, 1.0) <= EXP_SAFE:
        return _choose_unshifted(logits, mask, opts.greedy, u, scale)
    probs = mask.fill_(torch.softmax(logits, dim=-1), 0.0)
    if opts.greedy:
        token, total = _argmax(probs)
    else:
        if filtered:
            weights = torch.softmax(_filter(mask.fill_(logits.clone(), -math.inf), opts), dim=-1)
        elif opts.temperature != 1.0:
            weights = mask.fill_(torch.softmax(logits * (1.0 / opts.temperature), dim=-1), 0.0)
        else:
            weights = probs
        token, total = _draw(weights, u)
    # rows whose every allowed token underflowed to 0 (a low temperature, or controls that
    # force what the model finds very unlikely): again from the masked logits themselves
    stuck = (total <= 0).nonzero().squeeze(1)
    if stuck.numel():
        allowed = mask.dense(logits)[stuck]
        masked = logits[stuck].masked_fill(~allowed, -math.inf)
        token[stuck] = (
            masked.argmax(dim=-1)
            if opts.greedy
            else _draw(torch.softmax(_filter(masked, opts), dim=-1), _uniform(stuck.numel(), logits.device, generator))[
                0
            ]
        )
    logp = probs.gather(1, token[:, None]).squeeze(1).log()
    lost = (~torch.isfinite(logp)).nonzero().squeeze(1)  # probabilities below float range
    if lost.numel():
        logp[lost] = torch.log_softmax(logits[lost], dim=-1).gather(1, token[lost, None]).squeeze(1)
    return token, logp


def _choose_unshifted(
    logits: Tensor, mask: _Mask, greedy: bool, u: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """_choose for logits whose exp, at temperature 1 and at 1 / scale, is a normal fp32
    number whatever the row (see EXP_SAFE): weights exp(scale * logits) in place, and the
    model's normaliser sum(exp(logits)) from the same pass at temperature 1."""
    uniform = mask.allowed is None
    # fp32 sums (a float64 accumulator is a slow, unvectorised path), in float64 after
    if scale == 1.0:
        weights = logits.exp_()
        if uniform and not greedy:  # the forbidden mass; the draw sums the allowed rest
            norm = weights.index_select(1, mask.forbidden).sum(dim=1).double()
        else:
            norm = weights.sum(dim=1).double()
    else:
        norm = torch.exp(logits).sum(dim=1).double()
        weights = logits.mul_(scale).exp_()
    mask.fill_(weights, 0.0)
    if greedy:
        token = _argmax(weights)[0]
    else:
        token, allowed = _draw(weights, u)
        if scale == 1.0 and uniform:
            norm = norm + allowed
    logp = weights.gather(1, token[:, None]).squeeze(1).double().log() / scale - norm.log()
    return token, logp.float()


class DecodeTables:
    """What decoding needs that depends only on the weights and the vocabulary: the
    StepDecoder's tables, the form masks, and the control tables of each Controls used.
    Built once per loaded model (Poet keeps one), so that a call for one poem does not
    rebuild vocabulary-sized tables; build a new one after changing the weights."""

    @torch.no_grad()
    def __init__(self, model: PoetVAE, vocab: Vocab, device: torch.device | str):
        self.vocab, self.device = vocab, torch.device(device)
        self.step = StepDecoder(model)
        chars = vocab.token_chars()
        self.form = _FormTable(chars, self.device)
        self.token_chars = chars.to(self.device)
        self._controls: dict[Controls, ControlTables] = {}

    def controls(self, controls: Controls | None) -> ControlTables | None:
        if controls is None or not controls.active:
            return None
        if controls not in self._controls:
            self._controls[controls] = ControlTables(controls, self.vocab, self.device)
        return self._controls[controls]


@torch.no_grad()
def generate(
    model: PoetVAE,
    z: Tensor,
    vocab: Vocab,
    opts: DecodeOptions = DecodeOptions(),
    generator: torch.Generator | None = None,
    controls: Controls | None = None,
    beam: int = 1,
    prepared: DecodeTables | None = None,
) -> Generation:
    """Decode a batch of latent codes z (B, Z) into well-formed poems.

    Sampling (or greedy) by default; `beam` > 1 runs a beam search of that width per z
    (every hypothesis has the same 20 characters, so scores compare without length
    normalisation) and returns the best beam. `controls` adds rhyme, tones, acrostic and
    prefix constraints (see poetvae.controls). Decoding is always without dropout.
    `prepared`: DecodeTables(model, vocab, z.device), to reuse across calls.
    """
    if beam < 1:
        raise ValueError("beam must be at least 1")
    device = z.device
    prepared = prepared or DecodeTables(model, vocab, device)
    tables = prepared.controls(controls)
    token_chars, form, step = prepared.token_chars, prepared.form, prepared.step
    b = z.size(0)
    rows = _Rows(step, model, z.repeat_interleave(beam, dim=0), tables)
    # beam scores: (B, W); all beams start equal, so only the first is live at step 0
    scores = torch.full((b, beam), -math.inf, device=device)
    scores[:, 0] = 0.0
    for t in range(FORM.seq_len):
        hidden, rows.hc = step(rows.prev, rows.written, rows.z_gates, rows.hc)
        mask = form.mask(rows, tables)
        if beam == 1:
            u = None if opts.greedy else _uniform(b, device, generator)  # greedy draws nothing
            token, token_logp = _choose(step.logits(hidden), mask, opts, u, generator, step.logit_bound)
        else:
            logp = torch.log_softmax(step.logits(hidden), dim=-1)
            v = logp.size(1)
            # a finished row extends only with <pad>, at no cost
            step_logp = mask.fill_(torch.where(rows.finished[:, None], 0.0, logp), -math.inf)
            total = (scores.view(-1, 1) + step_logp).view(b, beam * v)
            scores, flat = total.topk(beam, dim=1)  # sorted: beam 0 is the best
            parent = (torch.arange(b, device=device)[:, None] * beam + flat // v).view(-1)
            rows.select(parent)
            logp = logp[parent]
            token = (flat % v).view(-1)
            token_logp = logp.gather(1, token[:, None]).squeeze(1)
        _advance(rows, t, token, token_logp, token_chars, tables)
    best = torch.arange(b, device=device) * beam  # beam 0 of each z
    return Generation(rows.out[best], rows.logprob[best], rows.ctl["backoff"][best])


def _advance(
    rows: _Rows, t: int, token: Tensor, step_logp: Tensor, token_chars: Tensor, tables: ControlTables | None
) -> None:
    rows.logprob += torch.where(rows.finished, 0.0, step_logp)
    if tables is not None:
        tables.update(token, rows.written, rows.ctl)
    rows.out[:, t] = token
    rows.written += token_chars[token]
    rows.finished |= token == EOS
    rows.prev = token


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
