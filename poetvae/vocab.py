"""The vocabulary: characters (default) or jieba words, and poems <-> fixed-length id rows.

Every poem becomes one row of FORM.seq_len = 21 ids: its tokens, then <eos>, then <pad>. With
characters that is always 20 characters + <eos>; with jieba words it is fewer tokens, but
each line is segmented on its own so a word never straddles a line break, and every
token knows how many characters it spans (`token_chars`), which is what lets the decoder
keep every line at exactly five characters.

Saved as JSON (ensure_ascii=False so the file stays readable), never pickle.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from poetvae.errors import CheckpointError, VocabError
from poetvae.form import FORM, is_han

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def _jieba_cut(line: str) -> list[str]:
    import jieba  # imported lazily: it takes a second and prints to stderr on first use

    jieba.setLogLevel(60)
    return jieba.lcut(line, HMM=False)  # HMM off: only dictionary words, deterministic


def _token_problem(tokens: list[str], tokenizer: str) -> str | None:
    """What is wrong with a loaded vocabulary's tokens, or None: after the special tokens,
    each must be one Han character (char), or a word of Han characters that fits in a line
    (jieba). Anything else (several characters, a newline, a terminal's escape codes) would
    be printed raw into the poems and break their form."""
    longest = FORM.chars_per_line if tokenizer == "jieba" else 1
    for i, token in enumerate(tokens[len(SPECIALS) :], len(SPECIALS)):
        if not (1 <= len(token) <= longest and all(is_han(ch) for ch in token)):
            what = "one Han character" if longest == 1 else f"a word of 1 to {longest} Han characters"
            return f"token {i} is {ascii(token)[:40]}, not {what}"
    return None


@dataclass
class Vocab:
    tokens: list[str]  # id -> token; ids 0..3 are SPECIALS
    counts: list[int]  # id -> count in the training split (0 for specials)
    tokenizer: str = "char"
    min_count: int = 1
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise VocabError("a vocabulary must start with the special tokens " + " ".join(SPECIALS))
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    # ---- building -------------------------------------------------------------------
    @classmethod
    def build(cls, poems: Sequence[Sequence[str]], tokenizer: str = "char", min_count: int = 1) -> Vocab:
        """Vocabulary of the poems (each a sequence of 4 lines), most frequent tokens first.

        In jieba mode every single character above min_count is kept too, so a rare word can
        always be spelled out character by character instead of becoming <unk>.
        """
        if tokenizer not in ("char", "jieba"):
            raise VocabError(f"unknown tokenizer {tokenizer!r} (expected char or jieba)")
        counts: Counter[str] = Counter()
        char_counts: Counter[str] = Counter()
        for lines in poems:
            for line in lines:
                char_counts.update(line)
                if tokenizer == "jieba":
                    counts.update(_jieba_cut(line))
        if tokenizer == "char":
            counts = char_counts
        else:
            counts.update({c: n for c, n in char_counts.items() if c not in counts})
        kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        return cls(list(SPECIALS) + kept, [0] * len(SPECIALS) + [counts[t] for t in kept], tokenizer, min_count)

    # ---- poems <-> ids --------------------------------------------------------------
    def tokenize_line(self, line: str) -> list[str]:
        """Tokens of one line; a word missing from the vocabulary is spelled out in characters."""
        if self.tokenizer == "char":
            return list(line)
        out: list[str] = []
        for word in _jieba_cut(line):
            out.extend([word] if word in self.index else list(word))
        return out

    def encode(self, lines: Sequence[str]) -> list[int]:
        """Ids of a poem's tokens followed by <eos> (unpadded; unknown tokens -> <unk>)."""
        ids = [self.index.get(t, UNK) for line in lines for t in self.tokenize_line(line)]
        return ids + [EOS]

    def encode_batch(self, poems: Sequence[Sequence[str]]) -> torch.Tensor:
        """(N, FORM.seq_len) int64 rows: tokens, <eos>, then <pad>."""
        rows = torch.full((len(poems), FORM.seq_len), PAD, dtype=torch.long)
        for i, lines in enumerate(poems):
            ids = self.encode(lines)
            rows[i, : len(ids)] = torch.tensor(ids)
        return rows

    def unknown(self, lines: Sequence[str]) -> list[str]:
        """Characters of the poem that the vocabulary cannot spell (each listed once)."""
        missing = [t for line in lines for t in self.tokenize_line(line) if t not in self.index]
        return list(dict.fromkeys(missing))

    def require_known(self, lines: Sequence[str], hint: str = "") -> None:
        """Raise VocabError naming every character of `lines` the vocabulary cannot spell."""
        missing = self.unknown(lines)
        if missing:
            raise VocabError("not in the model's vocabulary: " + " ".join(missing) + (f" ({hint})" if hint else ""))

    def decode(self, ids: Sequence[int]) -> list[str]:
        """The 4 lines spelled by a row of ids (stops at <eos>; drops other special tokens)."""
        text = ""
        for i in ids:
            if i == EOS:
                break
            text += "□" if i == UNK else self.tokens[i] if i >= len(SPECIALS) else ""
        n = FORM.chars_per_line
        return [text[k : k + n] for k in range(0, len(text), n)]

    def token_chars(self) -> torch.Tensor:
        """(V,) characters each token spans: 0 for specials, 1 for a character, more for words.

        <unk> counts as one character: it stands for one character the vocabulary lacks.
        """
        n = [0] * len(SPECIALS) + [len(t) for t in self.tokens[len(SPECIALS) :]]
        n[UNK] = 1
        return torch.tensor(n, dtype=torch.long)

    def unk_rate(self, poems: Sequence[Sequence[str]]) -> float:
        ids = [i for lines in poems for i in self.encode(lines)[:-1]]
        return sum(i == UNK for i in ids) / max(len(ids), 1)

    # ---- files ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "tokenizer": self.tokenizer,
                "min_count": self.min_count,
                "specials": list(SPECIALS),
                "tokens": self.tokens,
                "counts": self.counts,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "vocab.json") -> Vocab:
        try:
            d = json.loads(text)
            tokens, counts, tokenizer, min_count = d["tokens"], d["counts"], d["tokenizer"], d["min_count"]
        except (KeyError, TypeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError
            raise CheckpointError(f"{source} is not a poetvae vocabulary ({e})") from None
        problem = (
            "tokens must be a list of distinct non-empty strings"
            if not (isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens))
            or len(set(tokens)) != len(tokens)
            else "counts must be one whole number per token"
            if not (isinstance(counts, list) and len(counts) == len(tokens))
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in counts)
            else f"unknown tokenizer {tokenizer!r}"
            if tokenizer not in ("char", "jieba")
            else "min_count must be a whole number"
            if not isinstance(min_count, int) or isinstance(min_count, bool)
            else _token_problem(tokens, tokenizer)
        )
        if problem:
            raise CheckpointError(f"{source} is not a poetvae vocabulary ({problem})")
        try:
            return cls(tokens, counts, tokenizer, min_count)
        except VocabError as e:
            raise CheckpointError(f"{source} is not a poetvae vocabulary ({e})") from None

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            raise CheckpointError(f"no vocabulary at {path}") from None
        except UnicodeDecodeError:
            raise CheckpointError(f"{path} is not UTF-8 text") from None
