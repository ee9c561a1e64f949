"""The corpus's character bigrams, and a temperature that does not sharpen them (issue 21).

Sampling at a temperature T < 1 draws in proportion to p^(1/T): it sharpens every choice,
the stock bigrams of the corpus with the rest. A calibrated model that writes 不知 about as
often as the poets do (21 times in 1,000 poems) writes it 49 times at T = 0.8, and its poems
share their bigrams (distinct-2 0.79 against 0.90 for human verse). The bigram correction
K in [0, 1] draws instead in proportion to

    p(w | poem so far)^(1/T) * b(w | previous character)^(K (1 - 1/T))

that is, the temperature applies to p / b^K: with K = 1 a choice that the previous character
alone explains (p close to b) is left at the model's own probability, and the temperature
sharpens only what the rest of the poem adds. At T = 1, or K = 0, it is plain sampling. The
poems' scores stay the model's own log-probabilities.

b is an interpolated (Witten-Bell) bigram model of the shipped quatrains and stanzas, with
the line start as a context of its own (the bigrams inside a line are the ones distinct-2
counts): b(w | c) = (n(c, w) + N1+(c) u(w)) / (n(c) + N1+(c)), u the characters' frequencies.
The table (prosody_data/bigrams.safetensors, built by tools/build_bigrams.py) keeps the
bigrams seen at least 3 times, which is 81 % of the corpus's bigrams, and the exact n(c) and
N1+(c); a pruned bigram falls back to N1+(c) u(w) / (n(c) + N1+(c)), a tiny change.

For a word vocabulary (jieba), a token's b is its first character's bigram after the previous
token's last character, times the bigrams inside the token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from poetvae.files import atomic_path
from poetvae.form import FORM
from poetvae.vocab import SPECIALS, Vocab

TABLE_PATH = Path(__file__).parent / "prosody_data" / "bigrams.safetensors"
LINE_START = 0  # the table's context index for the first character of a line
MIN_COUNT = 3  # bigrams kept in the shipped table
_UNSEEN = 0.5  # the count a character absent from the table gets in u


@dataclass
class BigramTable:
    """Bigram counts over characters, as a sparse matrix in compressed-row form.

    chars[i] is character i (chars[0] = "" stands for the line start); row c holds the
    successors col[crow[c]:crow[c+1]] with their counts; total[c] and distinct[c] are n(c)
    and N1+(c) over all bigrams, pruned ones included; unigram[i] counts character i."""

    chars: list[str]
    crow: Tensor  # (n + 1,) int64
    col: Tensor  # (nnz,) int64
    count: Tensor  # (nnz,) int64
    total: Tensor  # (n,) int64
    distinct: Tensor  # (n,) int64
    unigram: Tensor  # (n,) int64

    @classmethod
    def from_lines(cls, lines: Iterable[str], min_count: int = MIN_COUNT) -> BigramTable:
        """Count the bigrams of lines of characters, the line start included; keep those seen
        at least min_count times."""
        counts: dict[tuple[str, str], int] = {}
        for line in lines:
            prev = ""
            for ch in line:
                counts[prev, ch] = counts.get((prev, ch), 0) + 1
                prev = ch
        chars = [""] + sorted({ch for pair in counts for ch in pair if ch})
        index = {ch: i for i, ch in enumerate(chars)}
        n = len(chars)
        pairs = torch.tensor([(index[a], index[b], c) for (a, b), c in counts.items()], dtype=torch.long).view(-1, 3)
        total = torch.zeros(n, dtype=torch.long).index_add_(0, pairs[:, 0], pairs[:, 2])
        distinct = torch.bincount(pairs[:, 0], minlength=n)
        unigram = torch.zeros(n, dtype=torch.long).index_add_(0, pairs[:, 1], pairs[:, 2])
        kept = pairs[pairs[:, 2] >= min_count]
        kept = kept[torch.argsort(kept[:, 0] * n + kept[:, 1])]
        crow = torch.zeros(n + 1, dtype=torch.long)
        crow[1:] = torch.bincount(kept[:, 0], minlength=n).cumsum(0)
        return cls(chars, crow, kept[:, 1].clone(), kept[:, 2].clone(), total, distinct, unigram)

    def save(self, path: str | Path) -> None:
        """Write the table as safetensors (characters as code points), atomically."""
        codes = torch.tensor([0] + [ord(ch) for ch in self.chars[1:]], dtype=torch.int32)
        tensors = {
            "chars": codes,
            "crow": self.crow.int(),
            "col": self.col.short() if len(self.chars) < 2**15 else self.col.int(),
            "count": self.count.int(),
            "total": self.total.int(),
            "distinct": self.distinct.int(),
            "unigram": self.unigram.int(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> BigramTable:
        t = load_file(str(path))
        chars = [""] + [chr(c) for c in t["chars"][1:].tolist()]
        return cls(chars, *(t[k].long() for k in ("crow", "col", "count", "total", "distinct", "unigram")))

    @cached_property
    def index(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}

    def prob(self, prev: str, ch: str) -> float:
        """b(ch | prev), prev "" for the line start; for tests and inspection."""
        index = self.index
        u = self.unigram_probs
        w = index.get(ch)
        u_w = float(u[w]) if w is not None else self.unseen_prob
        c = index.get(prev)
        if c is None or int(self.total[c]) == 0:
            return u_w
        lo, hi = int(self.crow[c]), int(self.crow[c + 1])
        hits = (self.col[lo:hi] == w).nonzero() if w is not None else []
        n_cw = int(self.count[lo + int(hits[0])]) if len(hits) else 0
        n_c, d_c = int(self.total[c]), int(self.distinct[c])
        return (n_cw + d_c * u_w) / (n_c + d_c)

    @cached_property
    def unigram_probs(self) -> Tensor:
        """u: each character's share of the corpus, add-0.5 smoothed; what is left of 1
        (0.5 / the denominator) is the share of a character the table lacks (unseen_prob)."""
        counts = self.unigram.double() + _UNSEEN
        counts[LINE_START] = 0.0
        return counts / (counts.sum() + _UNSEEN)

    @property
    def unseen_prob(self) -> float:
        return _UNSEEN / float(self.unigram.sum() + _UNSEEN * len(self.chars))


@lru_cache(maxsize=1)
def corpus_table() -> BigramTable:
    """The shipped table (prosody_data/bigrams.safetensors), read once."""
    return BigramTable.load(TABLE_PATH)


class BigramCorrection:
    """log b(token | previous token) for a batch of decoder rows, over one vocabulary: the
    table restricted to the vocabulary's characters, on the decoding device."""

    def __init__(self, vocab: Vocab, device: torch.device | str = "cpu", table: BigramTable | None = None):
        table = table or corpus_table()
        device = torch.device(device)
        index = table.index
        tokens = vocab.tokens
        specials = len(SPECIALS)
        # the classes: the distinct table characters that start a token (-1: not in the table)
        first = [index.get(t[0], -1) if i >= specials else -1 for i, t in enumerate(tokens)]
        classes = list(dict.fromkeys(f for f in first if f >= 0))  # in vocabulary order
        class_of = torch.full((len(table.chars),), -1, dtype=torch.long)
        class_of[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        k = len(classes) + 1  # the last class: tokens whose first character the table lacks
        u = table.unigram_probs
        self.token_class = torch.tensor([int(class_of[f]) if f >= 0 else k - 1 for f in first], dtype=torch.long)
        u_class = torch.empty(k, dtype=torch.float64)
        u_class[:-1] = u[torch.tensor(classes, dtype=torch.long)]
        u_class[-1] = table.unseen_prob
        # the contexts: the line start, then the table characters that end a token; each
        # token's context is its last character's (-1 -> an unknown context: b = u)
        last = [index.get(t[-1], -1) if i >= specials else -1 for i, t in enumerate(tokens)]
        contexts = [LINE_START] + sorted({c for c in last if c > 0})
        context_of = torch.full((len(table.chars),), -1, dtype=torch.long)
        context_of[torch.tensor(contexts, dtype=torch.long)] = torch.arange(len(contexts))
        unknown = len(contexts)
        self.token_context = torch.tensor([int(context_of[c]) if c > 0 else unknown for c in last], dtype=torch.long)
        # the entries of the kept contexts whose successor starts a token, renumbered
        row = torch.repeat_interleave(torch.arange(len(table.chars)), table.crow.diff())
        keep = (context_of[row] >= 0) & (class_of[table.col] >= 0)
        row, col, count = context_of[row[keep]], class_of[table.col[keep]], table.count[keep].double()
        n_ctx = len(contexts) + 1
        total = torch.zeros(n_ctx, dtype=torch.float64)
        distinct = torch.zeros(n_ctx, dtype=torch.float64)
        ctx_chars = torch.tensor(contexts, dtype=torch.long)
        total[:-1], distinct[:-1] = table.total[ctx_chars].double(), table.distinct[ctx_chars].double()
        seen = total > 0
        denominator = torch.where(seen, total + distinct, 1.0)
        # b(class | context) = count / denominator + backoff * u(class)
        self.backoff = torch.where(seen, distinct / denominator, 1.0).float().to(device)
        self.u = u_class.float().to(device)
        crow = torch.zeros(n_ctx + 1, dtype=torch.long)
        crow[1:] = torch.bincount(row, minlength=n_ctx).cumsum(0)
        order = torch.argsort(row * k + col)
        self.crow = crow.to(device)
        self.col = col[order].to(device)
        self.value = (count / denominator[row])[order].float().to(device)
        self.token_class = self.token_class.to(device)
        self.token_context = self.token_context.to(device)
        self.inside = self._inside(table, tokens, specials).to(device)
        # a character vocabulary whose characters the table all has: class i is token specials + i
        self.identity = all(len(t) == 1 for t in tokens[specials:]) and all(f >= 0 for f in first[specials:])
        self.specials = specials

    @staticmethod
    def _inside(table: BigramTable, tokens: Sequence[str], specials: int) -> Tensor:
        """(V,) log of the bigrams inside each token (0 for one character)."""
        inside = torch.zeros(len(tokens))
        for i, token in enumerate(tokens[specials:], specials):
            if len(token) > 1:
                inside[i] = sum(math.log(table.prob(a, b)) for a, b in zip(token, token[1:]))
        return inside

    def log_prob(self, prev: Tensor, chars_written: Tensor) -> Tensor:
        """(B, V) log b(token | the previous token) for rows that wrote `prev` (B,) with
        chars_written (B,) characters so far; the line start where a line begins. The
        special tokens get log b = 0 (the form decides them, not the correction)."""
        line_start = chars_written % FORM.chars_per_line == 0
        ctx = torch.where(line_start, 0, self.token_context[prev])
        # one row per different context (every row at a line start shares one), then spread
        ctx, inverse = torch.unique(ctx, return_inverse=True)
        return self._log_prob_of_contexts(ctx).index_select(0, inverse)

    def _log_prob_of_contexts(self, ctx: Tensor) -> Tensor:
        b = self.backoff[ctx][:, None] * self.u[None, :]  # (U, K): the back-off part
        # the kept bigrams of each context: entries crow[c] .. crow[c + 1] of the table
        start, length = self.crow[ctx], self.crow[ctx + 1] - self.crow[ctx]
        rows = torch.repeat_interleave(torch.arange(ctx.numel(), device=ctx.device), length)
        ends = length.cumsum(0)
        first_of_row = torch.repeat_interleave(ends - length - start, length)
        entry = torch.arange(int(ends[-1]) if ends.numel() else 0, device=ctx.device) - first_of_row
        b.index_put_((rows, self.col[entry]), self.value[entry], accumulate=True)
        if self.identity:  # a character vocabulary: class i is token specials + i
            specials = torch.zeros(ctx.numel(), self.specials, device=b.device)
            return torch.cat([specials, b[:, :-1].log_()], dim=1)
        logb = b.log_().index_select(1, self.token_class) + self.inside
        logb[:, : self.specials] = 0.0
        return logb
