"""The repetition rule: no stutter, without banning 叠字.

A decoder left to itself repeats what human verse avoids: the same character twice in a
row where no poet doubles it (溪边水水连), a character a third time, a word loop
(一枝千万里，一片一枝香), line 4 ending on line 2's own character (重韵). The rule
forbids exactly these, inside the decoder (a mask at each step, like the controls, never
a rejection loop), and it is learnt from the corpus, not written by hand: the table
`prosody_data/repeats.json` (built by tools/build_repeats.py from the shipped quatrains and
stanzas) says which characters human poems double at which place in a line (处处 opens a
line, 纷纷 closes one), which words they use twice (不可 ... 不可), how many times one
character may appear, and which pairs of lines never end on one character.

Writing a character at position p (0..19; line p // 5, column p % 5) is forbidden when

- stutter: it equals the character just before it in the line, and the table does not list
  it as a 叠字 of that place (doubles[column - 1]);
- third use: the poem already has it max_uses (2) times;
- loop: with the character before it, it makes a word of two different characters that
  the poem already has (inside one line), and the table does not list that word as one
  poems repeat (repeated_bigrams);
- line ends: it ends a line j and equals the last character of a line i, for a pair (i, j)
  of line_end_pairs (all six pairs: for lines 2 and 4 this is 重韵).

`violations(lines)` says this of a finished poem, in plain Python; `RepeatTables` applies
it inside the decoder (poetvae.decode, `DecodeOptions(repetition_rule=...)`, on by
default; `--no-repetition-rule` on the command line). When the rule leaves a row no
allowed token (a fixed acrostic character used a third time, a tiny vocabulary), it gives
way for that step, before any control does, and the poem's backoff says "repeats"; the
4x5 form and fixed characters are never relaxed. With a word (jieba) vocabulary a word is
checked character by character against what was written before it, and its own inner
pairs for stutters, but not for loops.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor

from poetvae.controls import BACKOFF_NAMES
from poetvae.form import FORM
from poetvae.sampling import TokenMask
from poetvae.vocab import SPECIALS, UNK, Vocab

REPEATS = BACKOFF_NAMES.index("repeats")  # the rule's column of a Generation's backoff
_COLS = FORM.chars_per_line
_ENDS = tuple(line * _COLS + _COLS - 1 for line in range(FORM.lines))  # positions 4, 9, 14, 19


@dataclass(frozen=True)
class RepeatTable:
    """What the corpus repeats (prosody_data/repeats.json; tools/build_repeats.py)."""

    doubles: tuple[frozenset[str], ...]  # per column c (0..3): characters doubled at c, c + 1
    repeated_bigrams: frozenset[str]  # words of 2 different characters poems use twice
    max_uses: int  # uses of one character a poem may make
    line_end_pairs: tuple[tuple[int, int], ...]  # (i, j) 0-based lines that never end alike

    @classmethod
    def from_json(cls, raw: dict) -> RepeatTable:
        return cls(
            doubles=tuple(frozenset(raw["doubles"][str(c)]) for c in range(_COLS - 1)),
            repeated_bigrams=frozenset(raw["repeated_bigrams"].split()),
            max_uses=int(raw["max_uses"]),
            line_end_pairs=tuple(
                (int(i) - 1, int(j) - 1) for i, j in (pair.split("-") for pair in raw["line_end_pairs"])
            ),
        )


@functools.cache
def corpus_table() -> RepeatTable:
    """The shipped table, read once."""
    res = resources.files("poetvae").joinpath("prosody_data/repeats.json")
    with res.open("r", encoding="utf-8") as f:
        return RepeatTable.from_json(json.load(f))


def violations(lines: Sequence[str], table: RepeatTable | None = None) -> list[tuple[int, str]]:
    """(position 0..19, kind) of every character of a poem that the rule would have
    forbidden when it was written, reading in order; kind is "stutter", "third use",
    "loop" or "line ends". [] for a poem the rule allows."""
    table = table or corpus_table()
    text = "".join(lines)
    found: list[tuple[int, str]] = []
    uses: Counter[str] = Counter()
    words: set[str] = set()
    for p, ch in enumerate(text):
        col = p % _COLS
        prev = text[p - 1] if col else ""
        if prev == ch and ch not in table.doubles[col - 1]:
            found.append((p, "stutter"))
        if uses[ch] >= table.max_uses:
            found.append((p, "third use"))
        word = prev + ch
        if col and prev != ch and word in words and word not in table.repeated_bigrams:
            found.append((p, "loop"))
        if p in _ENDS:
            j = _ENDS.index(p)
            if any(jj == j and text[_ENDS[i]] == ch for i, jj in table.line_end_pairs):
                found.append((p, "line ends"))
        uses[ch] += 1
        if col:
            words.add(word)
    return found


class RepeatTables:
    """The rule as tensors over one vocabulary, built once per loaded model
    (decode.DecodeTables keeps one) and applied at every step of a batch.

    Characters get ids of their own: a single-character token's id is its token id, a
    character found only inside words gets one after the vocabulary, and `pad` (= the
    number of ids) stands for "no character". A row's state is the characters written so
    far, (B, FORM.chars + 1) ids (the last column only ever holds pad)."""

    def __init__(self, vocab: Vocab, device: torch.device | str = "cpu", table: RepeatTable | None = None):
        table = table or corpus_table()
        self.max_uses = table.max_uses
        self.line_end_pairs = table.line_end_pairs
        tokens = list(vocab.tokens)
        v = len(tokens)
        ids: dict[str, int] = {t: i for i, t in enumerate(tokens) if i >= len(SPECIALS) and len(t) == 1}
        extra: list[str] = []  # characters found only inside words get ids v, v + 1, ...
        for t in tokens[len(SPECIALS) :]:
            for ch in t:
                if ch not in ids:
                    ids[ch] = v + len(extra)
                    extra.append(ch)
        self.pad = pad = v + len(extra)
        self.vocab_size = v
        lengths = [0 if i < len(SPECIALS) else len(t) for i, t in enumerate(tokens)]
        self.max_chars = max_chars = max(1, max(lengths))
        # the k-th character of every token (pad past its end), and how often that character
        # already appears among the token's first k characters
        tok_char = torch.full((max_chars, v), pad, dtype=torch.long)
        before = torch.zeros(max_chars, v, dtype=torch.long)
        # inner_stutter[c, t]: token t, starting at column c, doubles a character inside itself
        # where the corpus does not
        inner_stutter = torch.zeros(_COLS, v, dtype=torch.bool)
        for i, t in enumerate(tokens):
            if i < len(SPECIALS):
                continue
            for k, ch in enumerate(t):
                tok_char[k, i] = ids[ch]
                before[k, i] = t[:k].count(ch)
                for c in range(_COLS - k):  # the start columns from which the pair stays in the line
                    if k and t[k - 1] == ch and ch not in table.doubles[c + k - 1]:
                        inner_stutter[c, i] = True
        self.identity = max_chars == 1 and pad == v  # a character vocabulary: char id = token id
        self.tok_char = tok_char.to(device)
        self.tok_nchars = torch.tensor(lengths, dtype=torch.long, device=device)
        self.before = before.to(device)
        self.inner_stutter = inner_stutter.to(device)
        # double_ok[char, c]: the corpus doubles char at columns c, c + 1 (pad: never)
        double_ok = torch.zeros(pad + 1, _COLS - 1, dtype=torch.bool)
        for c, chars in enumerate(table.doubles):
            for ch in chars:
                if ch in ids:
                    double_ok[ids[ch], c] = True
        self.double_ok = double_ok.to(device)
        # the repeated words as sorted keys first * (pad + 1) + second, for torch.isin
        keys = [ids[w[0]] * (pad + 1) + ids[w[1]] for w in table.repeated_bigrams if w[0] in ids and w[1] in ids]
        self.bigram_keys = torch.tensor(sorted(keys), dtype=torch.long, device=device)
        # earlier words: pairs of positions (j, j + 1) inside one line
        starts = [j for j in range(FORM.chars - 1) if j % _COLS != _COLS - 1]
        self.pair_first = torch.tensor(starts, dtype=torch.long, device=device)

    # ---- per-row state -------------------------------------------------------------------
    def initial_state(self, batch: int) -> dict[str, Tensor]:
        device = self.tok_char.device
        return {"repeat_chars": torch.full((batch, FORM.chars + 1), self.pad, dtype=torch.long, device=device)}

    def update(self, token: Tensor, chars_written: Tensor, state: dict[str, Tensor]) -> None:
        """Record the characters of `token`, written at position `chars_written`."""
        n = self.tok_nchars[token]
        chars = state["repeat_chars"]
        for k in range(self.max_chars):
            covers = n > k
            where = torch.where(covers, chars_written + k, FORM.chars).clamp(max=FORM.chars)
            chars.scatter_(1, where[:, None], torch.where(covers, self.tok_char[k, token], self.pad)[:, None])

    # ---- the mask ------------------------------------------------------------------------
    def _at_next(self, p: Tensor, chars: Tensor) -> list[Tensor]:
        """(B, n) character ids that may not come at position p (B,), the next one, for
        the stutter, the loop and the line-end rules (pad: none)."""
        pad = self.pad
        col = p % _COLS
        prev = chars.gather(1, (p - 1).clamp(min=0)[:, None]).squeeze(1)
        prev = torch.where(col > 0, prev, pad)  # the character before, in the same line
        stutter = (col > 0) & ~self.double_ok[prev, (col - 1).clamp(min=0)]
        first, second = chars[:, self.pair_first], chars[:, self.pair_first + 1]
        earlier = (self.pair_first + 1)[None, :] < p[:, None]  # both characters written before prev
        loop = earlier & (first == prev[:, None]) & (second != prev[:, None]) & (prev[:, None] != pad)
        if self.bigram_keys.numel():
            loop &= ~torch.isin(prev[:, None] * (pad + 1) + second, self.bigram_keys)
        return [torch.where(stutter, prev, pad)[:, None], torch.where(loop, second, pad), *self._line_ends(p, chars)]

    def _line_ends(self, q: Tensor, chars: Tensor) -> list[Tensor]:
        """(B, 1) character ids forbidden at position q (B,) by line_end_pairs (pad: none)."""
        return [torch.where(q == _ENDS[j], chars[:, _ENDS[i]], self.pad)[:, None] for i, j in self.line_end_pairs]

    def _used_up(self, chars: Tensor) -> Tensor:
        """(B, FORM.chars) the written characters already used max_uses times (pad: others)."""
        written = chars[:, : FORM.chars]
        uses = (written[:, :, None] == written[:, None, :]).sum(dim=2)
        return torch.where((uses >= self.max_uses) & (written != self.pad), written, self.pad)

    def forbidden(self, chars_written: Tensor, state: dict[str, Tensor]) -> Tensor:
        """(B, V) bool: the tokens the rule forbids next, for rows at `chars_written`."""
        chars = state["repeat_chars"]
        b, pad, v = chars.size(0), self.pad, self.vocab_size
        p = chars_written.clamp(max=FORM.chars)
        if self.identity:
            forbid = torch.zeros(b, v + 1, dtype=torch.bool, device=chars.device)  # column v = pad
            forbid.scatter_(1, torch.cat([self._used_up(chars), *self._at_next(p, chars)], dim=1), True)
            return forbid[:, :v]
        uses = torch.zeros(b, pad + 1, dtype=torch.uint8, device=chars.device)
        uses.scatter_add_(1, chars, torch.ones_like(chars, dtype=torch.uint8))
        uses[:, pad] = 0
        forbid = self.inner_stutter[p % _COLS]  # (B, V): a fresh tensor
        for k in range(self.max_chars):
            tok = self.tok_char[k].expand(b, -1)
            forbid |= (uses.gather(1, tok).long() + self.before[k] >= self.max_uses) & (self.tok_nchars > k)
            char_bad = torch.zeros(b, pad + 1, dtype=torch.bool, device=chars.device)
            ids = self._at_next(p, chars) if k == 0 else self._line_ends(p + k, chars)
            char_bad.scatter_(1, torch.cat(ids, dim=1), True)
            char_bad[:, pad] = False
            forbid |= char_bad.gather(1, tok)
        return forbid

    def mask(self, mask: TokenMask, chars_written: Tensor, state: dict[str, Tensor]) -> TokenMask:
        """`mask` with the rule applied; a row it would leave without any token keeps
        `mask` for this step, and its state["backoff"] records "repeats"."""
        if bool((chars_written >= FORM.chars).all()):  # only <eos> / <pad> are left
            return mask
        chars = state["repeat_chars"]
        b = chars.size(0)
        if self.identity:
            # a character vocabulary: a few ids per row to forbid; <unk> (never allowed
            # anyway) takes the place of "none"
            p = chars_written.clamp(max=FORM.chars)
            ids = torch.cat([self._used_up(chars), *self._at_next(p, chars)], dim=1)
            ids = torch.where(ids == self.pad, UNK, ids)
            room = self.vocab_size - mask.forbidden.numel() if mask.allowed is None else 0
            if room > ids.size(1):
                # every row keeps a token: the ids ride along with the columns forbidden to
                # every row, and no (B, V) mask is built
                return TokenMask(forbidden=mask.forbidden, extra=ids)
        if mask.allowed is not None:
            allowed = mask.allowed.clone()
        else:
            allowed = torch.ones(b, self.vocab_size, dtype=torch.bool, device=chars.device)
            allowed.index_fill_(1, mask.forbidden, False)
        if not self.identity:
            forbid = self.forbidden(chars_written, state)
            ruled = allowed & ~forbid
        else:
            kept = allowed.gather(1, ids)
            ruled = allowed.scatter_(1, ids, False)
        stuck = ~ruled.any(dim=1)
        if bool(stuck.any()):
            state["backoff"][:, REPEATS] |= stuck
            if self.identity:
                rows = stuck.nonzero().squeeze(1)
                ruled[rows] = ruled[rows].scatter_(1, ids[rows], kept[rows])
            else:
                ruled = torch.where(stuck[:, None], allowed, ruled)
        return TokenMask(allowed=ruled)
