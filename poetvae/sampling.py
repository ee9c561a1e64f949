"""Choosing the next token: the decoder's sampling algorithm, first plain, then fast.

For a batch of logits (B, V) over the vocabulary, each row:
  1. mask: the tokens that the form or the controls forbid get probability 0;
  2. greedy: the most likely allowed token; otherwise
  3. softmax of the masked logits at the temperature, cut to the top-k / top-p tokens, and
  4. a draw by inverting the cumulative distribution at a uniform u in [0, 1): the first
     token whose running sum of probabilities exceeds u (torch.multinomial draws from the
     same distribution, with randomness of its own);
and the token's log-probability under the model itself (temperature 1, no mask), which
is what a poem's score adds up. `choose_token_plain` is exactly that, in a few lines.

`choose_token` is what decoding calls: the same tokens for the same uniforms and the same
log-probabilities (tested against the plain version), with fewer passes over (B, V),
each of which costs about as much as copying it on the CPU (memory-bound):
- one softmax serves both the draw and the log-probability at temperature 1, and when
  every logit is known to be small (EXP_SAFE) exp runs without the shift by the row
  maximum, with no softmax at all;
- the draw inverts the cumulative distribution in two levels (sums of blocks of 64
  tokens, then inside one block): 3.4x faster than torch.multinomial, which draws V
  exponentials per row, and a running sum over all V is a slow sequential scan;
- the greedy maximum is found in two levels the same way: torch.argmax is a scalar loop
  on the CPU, 6x slower;
- a mask that is the same for every row is a list of forbidden columns (TokenMask).

Whatever the logits (NaN, +-inf or huge, from weights gone wrong), the token is an allowed
one: the chosen tokens (B,) are checked against the mask, and the rare rows that fail, or
whose allowed weights sum to no positive number, are chosen again by `choose_allowed`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# |logit| below which exp(logit) is a normal fp32 number (e^-87 .. e^88) and a vocabulary of
# up to ~900,000 such terms still sums below the fp32 maximum: exp can then skip the shift
# by the row maximum that softmax makes.
EXP_SAFE = 75.0


class TokenMask:
    """Which tokens may come next, in the cheapest form that says it: `forbidden` (K,), the
    columns forbidden to every row (when every row is at the same point of the form: always
    so for a character vocabulary without controls), optionally with `extra` (B, k), a few
    more ids forbidden to each row (the repetition rule's: the characters a row has used
    up); or `allowed` (B, V) bool per row. The sparse forms cost a few (B, k) lookups where
    the dense one costs a pass over (B, V)."""

    def __init__(self, *, allowed: Tensor | None = None, forbidden: Tensor | None = None, extra: Tensor | None = None):
        if (allowed is None) == (forbidden is None) or (extra is not None and forbidden is None):
            raise ValueError("a TokenMask is either allowed tokens per row or forbidden columns (and ids per row)")
        self.allowed, self.forbidden, self.extra = allowed, forbidden, extra

    @property
    def same_for_all_rows(self) -> bool:
        return self.allowed is None and self.extra is None

    def fill_(self, x: Tensor, value: float) -> Tensor:
        """Set the forbidden entries of x (B, V) to value, in place."""
        if self.allowed is None:
            x.index_fill_(1, self.forbidden, value)
            return x if self.extra is None else x.scatter_(1, self.extra, value)
        return x.masked_fill_(~self.allowed, value)

    def dense(self, like: Tensor) -> Tensor:
        """The allowed tokens as a (B, V) bool, for scores `like` (B, V)."""
        if self.allowed is not None:
            return self.allowed
        return self.fill_(torch.ones_like(like, dtype=torch.bool), False)

    def rows(self, index: Tensor, vocab_size: int) -> Tensor:
        """The allowed tokens of the rows `index` (n,), as an (n, V) bool."""
        if self.allowed is not None:
            return self.allowed[index]
        allowed = torch.ones(index.numel(), vocab_size, dtype=torch.bool, device=index.device)
        allowed.index_fill_(1, self.forbidden, False)
        return allowed if self.extra is None else allowed.scatter_(1, self.extra[index], False)

    def allows(self, token: Tensor, vocab_size: int, rows: Tensor | None = None) -> Tensor:
        """(B,) bool: whether each token (B,) is allowed in its row, or in row rows[i] when
        given; B lookups, no pass over (B, V)."""
        if self.allowed is None:
            ok = torch.ones(vocab_size, dtype=torch.bool, device=token.device)
            ok = ok.index_fill_(0, self.forbidden, False)[token]
            if self.extra is not None:
                extra = self.extra if rows is None else self.extra[rows]
                ok &= ~(extra == token[:, None]).any(dim=1)
            return ok
        if rows is None:
            return self.allowed.gather(1, token[:, None]).squeeze(1)
        return self.allowed[rows, token]


def uniforms(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """(n, 1) float64 uniform in [0, 1): the u of each row's draw."""
    return torch.rand(n, 1, device=device, generator=generator, dtype=torch.float64)


def filter_logits(logits: Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus) on already-masked logits (B, V)."""
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


def choose_token_plain(
    logits: Tensor,
    allowed: Tensor,
    u: Tensor | None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
) -> tuple[Tensor, Tensor]:
    """The sampling algorithm as it is usually written; the reference for choose_token.

    logits (B, V); allowed (B, V) bool; u (B, 1) float64 uniform in [0, 1) (unused when
    greedy). Returns the tokens (B,) and their log-probabilities (B,) under the model
    itself: temperature 1, no mask.
    """
    masked = logits.masked_fill(~allowed, -math.inf)
    if greedy:
        token = masked.argmax(dim=-1)
    else:
        probs = torch.softmax(filter_logits(masked, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)
        cdf = probs.double().cumsum(dim=-1)
        token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp(max=logits.size(-1) - 1)
    return token, torch.log_softmax(logits, dim=-1).gather(1, token[:, None]).squeeze(1)


def choose_allowed(
    logits: Tensor,
    allowed: Tensor,
    u: Tensor | None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
) -> Tensor:
    """choose_token_plain's token for logits of any value: always an allowed one, for rows
    with at least one allowed token. NaN counts as -inf; a row with +inf among its allowed
    logits chooses among those, and a row with no finite allowed logit among all its
    allowed tokens, each as likely as the other. For the few rows that choose_token cannot
    serve; one pass over (n, V) more than the plain algorithm."""
    x = logits.masked_fill(~allowed | logits.isnan(), -math.inf)
    top = x.amax(dim=1, keepdim=True)
    x = torch.where(top == math.inf, torch.where(x == math.inf, 0.0, -math.inf), x)
    x = torch.where(top == -math.inf, torch.where(allowed, 0.0, -math.inf), x)
    if greedy:
        return x.argmax(dim=1)
    x = x - x.amax(dim=1, keepdim=True)  # the largest is 0, whatever the temperature
    probs = torch.softmax(filter_logits(x, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)
    return draw_by_cdf(probs, u)[0]


def _rows_to_choose_again(token: Tensor, total: Tensor, mask: TokenMask, vocab_size: int) -> Tensor:
    """The rows whose token the mask forbids (NaN or infinite logits) or whose allowed
    weights do not sum to a positive finite number (all underflowed to 0 in fp32, or NaN)."""
    return (~((total > 0) & (total < math.inf)) | ~mask.allows(token, vocab_size)).nonzero().squeeze(1)


def choose_token(
    logits: Tensor,
    mask: TokenMask,
    u: Tensor | None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    logit_bound: float = math.inf,
    log_probs: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One token per row and its log-probability under the model: the same as
    `choose_token_plain(logits, mask.dense(logits), u, ...)`, in fewer passes over (B, V).

    The two can differ only where rounding puts u on the other side of a boundary between
    two tokens, and for rows whose every allowed probability underflows to 0 in fp32 (a
    very low temperature, or controls that force what the model finds very unlikely) or
    whose logits are not finite numbers: those are chosen again by choose_allowed, with a
    fresh uniform from `generator`, so that the token is always an allowed one.
    `logit_bound`: a bound on |logit| (StepDecoder.logit_bound); when it, divided by the
    temperature, is at most EXP_SAFE, exp needs no shift and there is no softmax.
    `log_probs`: the logits are log-probabilities already (the adaptive softmax's), so
    there is no normaliser to compute either (see _choose_normalized).
    May overwrite logits.
    """
    filtered = top_k > 0 or top_p < 1.0
    scale = 1.0 if greedy or filtered else 1.0 / temperature
    if log_probs and not filtered:
        return _choose_normalized(logits, mask, greedy, u, scale, generator)
    if not filtered and logit_bound * max(scale, 1.0) <= EXP_SAFE:
        return _choose_unshifted(logits, mask, greedy, u, scale, generator)
    probs = mask.fill_(torch.softmax(logits, dim=-1), 0.0)
    if greedy:
        token, total = argmax_in_blocks(probs)
    else:
        if filtered:
            weights = torch.softmax(
                filter_logits(mask.fill_(logits.clone(), -math.inf), temperature=temperature, top_k=top_k, top_p=top_p),
                dim=-1,
            )
        elif temperature != 1.0:
            weights = mask.fill_(torch.softmax(logits * (1.0 / temperature), dim=-1), 0.0)
        else:
            weights = probs
        token, total = draw_by_cdf(weights, u)
    again = _rows_to_choose_again(token, total, mask, logits.size(1))
    if again.numel():
        token[again] = choose_allowed(
            logits[again],
            mask.rows(again, logits.size(1)),
            None if greedy else uniforms(again.numel(), logits.device, generator),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
        )
    logp = probs.gather(1, token[:, None]).squeeze(1).log()
    lost = (~torch.isfinite(logp)).nonzero().squeeze(1)  # probabilities below float range
    if lost.numel():
        logp[lost] = torch.log_softmax(logits[lost], dim=-1).gather(1, token[lost, None]).squeeze(1)
    return token, logp


def _choose_normalized(
    logp: Tensor, mask: TokenMask, greedy: bool, u: Tensor | None, scale: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """choose_token for log-probabilities logp (B, V): every entry is at most 0, so exp never
    overflows at any temperature (scale = 1 / temperature), no shift is needed, and a
    token's log-probability under the model is its own entry. One exp pass (greedy too:
    the maximum of exp is that of logp); the rows whose allowed weights all underflow are
    chosen again from logp itself, as in choose_token."""
    weights = torch.exp(logp * scale) if scale != 1.0 else torch.exp(logp)
    mask.fill_(weights, 0.0)
    token, total = argmax_in_blocks(weights) if greedy else draw_by_cdf(weights, u)
    again = _rows_to_choose_again(token, total, mask, weights.size(1))
    if again.numel():
        u_again = None if greedy else uniforms(again.numel(), weights.device, generator)
        token[again] = choose_allowed(
            logp[again], mask.rows(again, weights.size(1)), u_again, temperature=1.0 / scale, greedy=greedy
        )
    return token, logp.gather(1, token[:, None]).squeeze(1)


def _choose_unshifted(
    logits: Tensor, mask: TokenMask, greedy: bool, u: Tensor | None, scale: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """choose_token for logits whose exp, at temperature 1 and at 1 / scale, is a normal fp32
    number whatever the row (see EXP_SAFE): weights exp(scale * logits) in place, and the
    model's normaliser sum(exp(logits)) from the same pass at temperature 1."""
    same_for_all_rows = mask.same_for_all_rows
    # fp32 sums (a float64 accumulator is a slow, unvectorised path), in float64 after
    if scale == 1.0:
        weights = logits.exp_()
        if same_for_all_rows and not greedy:  # the forbidden mass; the draw sums the allowed rest
            norm = weights.index_select(1, mask.forbidden).sum(dim=1).double()
        else:
            norm = weights.sum(dim=1).double()
    else:
        norm = torch.exp(logits).sum(dim=1).double()
        weights = logits.mul_(scale).exp_()
    mask.fill_(weights, 0.0)
    if greedy:
        token, total = argmax_in_blocks(weights)
    else:
        token, total = draw_by_cdf(weights, u)
        if scale == 1.0 and same_for_all_rows:
            norm = norm + total
    # only a row of NaN logits (a NaN in the decoder's state) fails here; log(weights) are
    # the logits at the temperature
    again = _rows_to_choose_again(token, total, mask, weights.size(1))
    if again.numel():
        u_again = None if greedy else uniforms(again.numel(), weights.device, generator)
        token[again] = choose_allowed(weights[again].log(), mask.rows(again, weights.size(1)), u_again, greedy=greedy)
    logp = weights.gather(1, token[:, None]).squeeze(1).double().log() / scale - norm.log()
    return token, logp.float()


def draw_by_cdf(weights: Tensor, u: Tensor, *, block: int = 64) -> tuple[Tensor, Tensor]:
    """One token per row, with probability proportional to weights (B, V) >= 0, by inverting
    the cumulative distribution at u (B, 1) uniform in [0, 1), in two levels: the block of
    `block` tokens from the running sums of block totals, then the token inside it.
    Returns the tokens and each row's total weight (a row of total 0 gets an arbitrary token)."""
    totals = _block_reduce(weights, block, "sum").double().cumsum(dim=1)  # (B, blocks)
    target = u * totals[:, -1:]  # below the row's total mass
    # right=True: the first running sum above the target, which never ends an empty block
    which = torch.searchsorted(totals, target, right=True).clamp_(max=totals.size(1) - 1)
    before = torch.where(which > 0, totals.gather(1, (which - 1).clamp(min=0)), 0.0)
    inside = _block_entries(weights, which, block, 0.0).double().cumsum(dim=1)
    # the two sums round differently: keep the target inside the block, so that the first
    # running sum above it is a token of nonzero weight
    rest = torch.minimum((target - before).clamp(min=0), inside[:, -1:] * (1 - 1e-12))
    offset = torch.searchsorted(inside, rest, right=True)
    return (which * block + offset).squeeze(1).clamp_(max=weights.size(1) - 1), totals[:, -1]


def argmax_in_blocks(x: Tensor, *, block: int = 64) -> tuple[Tensor, Tensor]:
    """Index and value of each row's largest entry (the first of equals), for x (B, V) >= 0,
    in two levels like draw_by_cdf: the first block holding the maximum, then inside it."""
    maxima = _block_reduce(x, block, "amax")
    which = maxima.argmax(dim=1, keepdim=True)  # the first block holding the maximum
    inside = _block_entries(x, which, block, -1.0)
    return (which * block + inside.argmax(dim=1, keepdim=True)).squeeze(1), maxima.gather(1, which).squeeze(1)


def _block_reduce(x: Tensor, block: int, reduce: str) -> Tensor:
    """(B, V) -> (B, ceil(V / block)): `reduce` ("sum" or "amax") over each run of `block`
    columns, the last run possibly shorter."""
    b, v = x.shape
    whole = v // block * block
    parts = getattr(x[:, :whole].view(b, -1, block), reduce)(dim=2)
    if whole < v:
        parts = torch.cat([parts, getattr(x[:, whole:], reduce)(dim=1, keepdim=True)], dim=1)
    return parts


def _block_entries(x: Tensor, which: Tensor, block: int, pad: float) -> Tensor:
    """(B, block): the entries of block `which` (B, 1) of each row, `pad` past the end."""
    index = which * block + torch.arange(block, device=x.device)
    return x.gather(1, index.clamp(max=x.size(1) - 1)).masked_fill_(index >= x.size(1), pad)
