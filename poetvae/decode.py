"""Constrained decoding: every poem that leaves the decoder is 4 lines x 5 Han characters.

    generate(model, z, vocab, DecodeOptions(temperature=0.8)) -> Generation(ids, logprob, backoff)

The form is enforced inside the decoder, step by step, by masking what may not come
next, never by rejection or retries: at each step a token is allowed only if it is a
real token (no <pad>/<unk>/<bos>) that fits in what is left of the current line; once
20 characters are out, only <eos> is allowed, and after <eos> only <pad>. Whatever the
weights, even NaN or infinite ones, the output is well formed.

On top of the form, the controls (poetvae.controls) and the repetition rule
(poetvae.repetition) are masks of the same kind, with back-offs that never touch the form.

The whole batch is decoded together: one decoder call per step for all poems
(poetvae.step_decoder), masks precomputed once per vocabulary, no Python work per poem
inside the loop. The next token is chosen by poetvae.sampling (mask, softmax at the
temperature, draw), or by a beam search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from poetvae.bigrams import BigramCorrection
from poetvae.config import check_seed
from poetvae.controls import BACKOFF_NAMES, Controls, ControlTables
from poetvae.form import FORM
from poetvae.model import RHYME_END, PoetVAE
from poetvae.repetition import RepeatTables
from poetvae.sampling import TokenMask, choose_allowed, choose_token, uniforms
from poetvae.step_decoder import StepDecoder
from poetvae.vocab import BOS, EOS, PAD, UNK, Vocab


@dataclass(frozen=True)
class DecodeOptions:
    """Every decoding choice, from the CLI through Poet to generate.

    generate reads temperature, top_k, top_p, greedy, beam, controls, repetition_rule and
    bigram_correction;
    Poet also reads the rest: which z (seed, infer_z), how many at a time, and the
    candidates per z.
    """

    temperature: float = 1.0  # <1 sharper, >1 flatter
    top_k: int = 0  # keep only the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus sampling: smallest set with this much mass (1: all)
    greedy: bool = False  # argmax at every step
    beam: int = 1  # beam-search width (1: sample, or greedy)
    rerank: int = 1  # candidates decoded per z, the best kept (by logprob + prosody_weight * prosody score)
    prosody_weight: float = 0.0  # with rerank > 1: weight of the rhyme/tone score
    controls: Controls | None = None  # rhyme, tones, acrostic, given lines (poetvae.controls)
    repetition_rule: bool = True  # forbid the repeats human verse avoids (poetvae.repetition)
    bigram_correction: float = 1.0  # 0..1: how far the temperature spares the corpus's bigrams (poetvae.bigrams)
    infer_z: bool = False  # z ~ q(z | the controls' prefix) instead of the prior N(0, I)
    seed: int | None = None  # fixes z and the draws (None: fresh randomness)
    batch_size: int = 2048  # poems decoded together

    def __post_init__(self) -> None:
        if not self.greedy and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError("temperature must be positive and finite")
        if not 0.0 <= self.bigram_correction <= 1.0:
            raise ValueError("bigram_correction must be between 0 and 1")
        if not math.isfinite(self.prosody_weight):
            raise ValueError("prosody_weight must be finite")
        if self.seed is not None:
            check_seed("seed", self.seed)
        if self.top_k < 0:
            raise ValueError("top_k must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.beam < 1:
            raise ValueError("beam must be at least 1")
        if self.rerank < 1:
            raise ValueError("rerank must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


class Generation(NamedTuple):
    ids: Tensor  # (B, FORM.seq_len) rows in the layout of Vocab.encode_batch
    logprob: Tensor  # (B,) log p(poem | z) under the model (temperature 1, no masks), nats
    backoff: Tensor  # (B, len(BACKOFF_NAMES)) bool: constraints relaxed somewhere in the poem


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
        self.form = _FormMasks(chars, self.device)
        self.token_chars = chars.to(self.device)
        self._controls: dict[Controls, ControlTables] = {}
        self._repeats: RepeatTables | None = None
        self._bigrams: BigramCorrection | None = None

    def bigrams(self) -> BigramCorrection:
        """The bigram correction's tables (poetvae.bigrams), built at first use."""
        if self._bigrams is None:
            self._bigrams = BigramCorrection(self.vocab, self.device)
        return self._bigrams

    def repeats(self) -> RepeatTables:
        """The repetition rule's tables (poetvae.repetition), built at first use."""
        if self._repeats is None:
            self._repeats = RepeatTables(self.vocab, self.device)
        return self._repeats

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
    options: DecodeOptions = DecodeOptions(),
    *,
    generator: torch.Generator | None = None,
    tables: DecodeTables | None = None,
) -> Generation:
    """Decode a batch of latent codes z (B, Z) into well-formed poems.

    Sampling (or greedy) by default; `options.beam` > 1 runs a beam search of that width
    per z (every hypothesis has the same 20 characters, so scores compare without length
    normalisation) and returns the best beam. `options.controls` adds rhyme, tones,
    acrostic and prefix constraints (see poetvae.controls); `options.repetition_rule` (on
    by default) forbids the repeats human verse avoids (poetvae.repetition), giving way
    for a step where it would leave no token; `options.bigram_correction` keeps the
    temperature from sharpening the corpus's stock bigrams (poetvae.bigrams). Decoding is always without dropout.
    `generator`: the draws' randomness; when None, a generator seeded with options.seed,
    or torch's global one if that is None too. `tables`: DecodeTables(model, vocab,
    z.device), to reuse across calls.
    """
    device = z.device
    if generator is None and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.seed)
    tables = tables or DecodeTables(model, vocab, device)
    control_tables = tables.controls(options.controls)
    repeats = tables.repeats() if options.repetition_rule else None
    step, form, beam = tables.step, tables.form, options.beam
    b = z.size(0)
    # the bigram correction's exponent on b, K (T - 1) before the division by T; 0 where it
    # changes nothing (T = 1, K = 0) or where nothing is drawn (greedy, beam search)
    sampling = beam == 1 and not options.greedy
    correction = options.bigram_correction * (options.temperature - 1.0) if sampling else 0.0
    rows = _Rows(step, model, z.repeat_interleave(beam, dim=0), control_tables, repeats)
    # beam scores: (B, W); all beams start equal, so only the first is live at step 0
    scores = torch.full((b, beam), -math.inf, device=device)
    scores[:, 0] = 0.0
    for t in range(FORM.seq_len):
        hidden, rows.state = step(rows.prev, rows.chars_written, rows.z_gates, rows.state, rows.line_tone())
        if rows.z_out is not None:
            hidden = hidden + step.skip_term(rows.z_out, rows.chars_written)
        mask = form.mask(rows, control_tables)
        if repeats is not None:  # the repetition rule, on top of the form and the controls
            mask = repeats.mask(mask, rows.chars_written, rows.control_state)
        if correction:  # nonzero only where a single row is drawn (beam 1, not greedy)
            # the temperature on p / b^K (poetvae.bigrams): the draw's weights move, the
            # poem's score stays the model's log-probability
            logp = step.log_probs(hidden)
            # the draw's log-weights at the temperature, shifted to a maximum of 0 so that one
            # exp pass draws from them (choose_token's log-probability path)
            weights = logp.add(tables.bigrams().log_prob(rows.prev, rows.chars_written), alpha=correction)
            weights.mul_(1.0 / options.temperature)
            weights.sub_(weights.amax(dim=1, keepdim=True))
            token, _ = choose_token(
                weights,
                mask,
                uniforms(b, device, generator),
                top_k=options.top_k,
                top_p=options.top_p,
                log_probs=True,
                generator=generator,
            )
            token_logp = logp.gather(1, token[:, None]).squeeze(1)
        elif beam == 1:
            u = None if options.greedy else uniforms(b, device, generator)  # greedy draws nothing
            token, token_logp = choose_token(
                step.logits(hidden),
                mask,
                u,
                temperature=options.temperature,
                top_k=options.top_k,
                top_p=options.top_p,
                greedy=options.greedy,
                logit_bound=step.logit_bound,
                log_probs=step.adaptive,
                generator=generator,
            )
        else:
            logp = step.log_probs(hidden)
            v = logp.size(1)
            # a finished row extends only with <pad>, at no cost
            step_logp = mask.fill_(torch.where(rows.finished[:, None], 0.0, logp), -math.inf)
            total = (scores.view(-1, 1) + step_logp).view(b, beam * v)
            scores, flat = total.topk(beam, dim=1)  # sorted: beam 0 is the best
            parent = (torch.arange(b, device=device)[:, None] * beam + flat // v).view(-1)
            rows.select(parent)
            logp = logp[parent]
            token = (flat % v).view(-1)
            # NaN scores (weights gone wrong) can pick a forbidden token: such a row takes
            # its parent's most likely allowed one instead
            again = (~mask.allows(token, v, rows=parent)).nonzero().squeeze(1)
            if again.numel():
                token[again] = choose_allowed(logp[again], mask.rows(parent[again], v), None, greedy=True)
            token_logp = logp.gather(1, token[:, None]).squeeze(1)
        _advance(rows, t, token, token_logp, tables.token_chars, control_tables, repeats)
    best = torch.arange(b, device=device) * beam  # beam 0 of each z
    return Generation(rows.out[best], rows.logprob[best], rows.control_state["backoff"][best])


def _advance(
    rows: _Rows,
    t: int,
    token: Tensor,
    step_logp: Tensor,
    token_chars: Tensor,
    control_tables: ControlTables | None,
    repeats: RepeatTables | None,
) -> None:
    rows.logprob += torch.where(rows.finished, 0.0, step_logp)
    if control_tables is not None:
        control_tables.update(token, rows.chars_written, rows.control_state)
    if repeats is not None:
        repeats.update(token, rows.chars_written, rows.control_state)
    rows.out[:, t] = token
    rows.write_form(token)
    rows.chars_written += token_chars[token]
    rows.finished |= token == EOS
    rows.prev = token


class _Rows:
    """Everything per row that decoding carries from step to step, so that beam search can
    reorder it all with one index."""

    def __init__(
        self,
        step: StepDecoder,
        model: PoetVAE,
        z: Tensor,
        control_tables: ControlTables | None,
        repeats: RepeatTables | None = None,
    ):
        b, device = z.size(0), z.device
        self.z_gates = step.z_gates(z)
        self.z_out = step.z_output(z)  # the skip connection's share of every output, or None
        self.state = model.decoder.initial_state(z)  # the LSTM's (h, c)
        self.prev = torch.full((b,), BOS, dtype=torch.long, device=device)
        self.chars_written = torch.zeros(b, dtype=torch.long, device=device)  # characters out so far
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.out = torch.full((b, FORM.seq_len), PAD, dtype=torch.long, device=device)
        self.logprob = torch.zeros(b, device=device)
        self.control_state = (
            control_tables.initial_state(b)
            if control_tables
            else {"backoff": torch.zeros(b, len(BACKOFF_NAMES), dtype=torch.bool, device=device)}
        )
        if repeats is not None:  # the characters written so far (poetvae.repetition)
            self.control_state.update(repeats.initial_state(b))
        # With form features: the tone class of each character written so far (column 20
        # takes what <eos> and <pad> write); line 2's rhyme group goes into z_gates.
        self.step = step
        if step.form:
            self.tones = torch.zeros(b, FORM.chars + 1, dtype=torch.long, device=device)

    def line_tone(self) -> Tensor | None:
        """The rows' tone class one line up for the next step, as PoetVAE.form_features
        computes it from a whole prefix; None without form features."""
        if not self.step.form:
            return None
        back = self.chars_written - FORM.chars_per_line
        line_tone = self.tones.gather(1, back.clamp(min=0)[:, None]).squeeze(1)
        return torch.where(back >= 0, line_tone, 0)

    def write_form(self, token: Tensor) -> None:
        """Record the form facts of `token`, written at chars_written (before it moves on)."""
        if not self.step.form:
            return
        written = self.chars_written.clamp(max=FORM.chars)
        self.tones.scatter_(1, written[:, None], self.step.token_tone[token][:, None])
        rhymed = (written == RHYME_END).nonzero().squeeze(1)  # rows that wrote line 2's last character
        if rhymed.numel():
            group = self.step.token_rhyme[token[rhymed]]
            self.z_gates.index_add_(0, rhymed, self.step.rhyme_gates[group].to(self.z_gates.dtype))

    def select(self, index: Tensor) -> None:
        if self.step.form:
            self.tones = self.tones[index]
        self.z_gates, self.prev = self.z_gates[index], self.prev[index]
        if self.z_out is not None:
            self.z_out = self.z_out[index]
        self.state = (self.state[0][:, index], self.state[1][:, index])
        self.chars_written, self.finished = self.chars_written[index], self.finished[index]
        self.out, self.logprob = self.out[index], self.logprob[index]
        self.control_state = {k: v[index] for k, v in self.control_state.items()}


def allowed_by_room(token_chars: Tensor) -> Tensor:
    """(FORM.chars_per_line + 2, V) bool: row r = tokens allowed when r characters are left in
    the current line (1..5); row 0 = the poem is complete (only <eos>); row 6 = finished
    (only <pad>)."""
    v = token_chars.numel()
    table = torch.zeros(FORM.chars_per_line + 2, v, dtype=torch.bool)
    real = token_chars > 0
    real[UNK] = False  # <unk> is never written
    for chars_left in range(1, FORM.chars_per_line + 1):
        table[chars_left] = real & (token_chars <= chars_left)
    table[0, EOS] = True
    table[FORM.chars_per_line + 1, PAD] = True
    return table


class _FormMasks:
    """The format constraint by characters left in the line (the rows of allowed_by_room),
    as dense rows and as forbidden-column lists for a batch whose rows all have the same."""

    def __init__(self, token_chars: Tensor, device: torch.device):
        self.table = allowed_by_room(token_chars).to(device)
        self.forbidden = [(~row).nonzero().squeeze(1) for row in self.table]

    def mask(self, rows: _Rows, control_tables: ControlTables | None) -> TokenMask:
        written = rows.chars_written
        chars_left = torch.where(written >= FORM.chars, 0, FORM.chars_per_line - written % FORM.chars_per_line)
        chars_left = torch.where(rows.finished, FORM.chars_per_line + 1, chars_left)
        if control_tables is not None and bool(control_tables.active_at[written.clamp(max=FORM.chars)].any()):
            return TokenMask(allowed=control_tables.mask(self.table[chars_left], written, rows.control_state))
        lo, hi = torch.aminmax(chars_left)
        if lo == hi:  # one host sync per step, to skip a (B, V) mask
            return TokenMask(forbidden=self.forbidden[int(lo)])
        return TokenMask(allowed=self.table[chars_left])


def latent_path(za: Tensor, zb: Tensor, steps: int, method: str = "linear") -> Tensor:
    """(steps, Z) points from za to zb inclusive. slerp follows the great circle, which keeps
    the points at a norm typical of N(0, I) samples instead of cutting through the middle.
    The first and last points are za and zb exactly (slerp's sines are not exact there), so
    the ends of a greedy path are the reconstructions of its poems."""
    if steps < 2:
        raise ValueError("an interpolation needs at least 2 steps")
    t = torch.linspace(0, 1, steps, device=za.device)[:, None]
    if method == "linear":
        path = (1 - t) * za + t * zb
    elif method == "slerp":
        cos = torch.dot(za, zb) / (za.norm() * zb.norm()).clamp_min(1e-8)
        omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        if omega.abs() < 1e-4:
            path = (1 - t) * za + t * zb
        else:
            path = (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)
    else:
        raise ValueError(f"unknown interpolation method {method!r} (expected linear or slerp)")
    path[0], path[-1] = za, zb
    return path
