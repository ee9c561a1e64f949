"""What a poem is: the 五言绝句 form, the Han-character test, the line splitter, the poem type.

Every other module asks this one instead of restating a rule:

* ``FORM``: the shape, as data. A 五言绝句 is ``FORM.lines`` = 4 lines of
  ``FORM.chars_per_line`` = 5 characters, ``FORM.chars`` = 20 in all; a poem's row of
  token ids has ``FORM.seq_len`` = 21 positions (at most 20 tokens, then ``<eos>``).
* :func:`is_han`: a Han ideograph is a code point of CJK Unified Ideographs
  (U+4E00-9FFF), Ext. A (U+3400-4DBF), Ext. B-G (U+20000-3134F, which holds the
  compatibility supplement U+2F800-2FA1F) or the compatibility ideographs
  (U+F900-FAFF). Anything else (``□``, digits, brackets, private use) is not.
* :func:`split_verse`: the one line splitter. Text is NFC-normalised, a byte-order mark
  dropped, and cut on ``SEPARATORS``: ``，。！？；、：`` and the ASCII and full-width
  forms of ``, . ! ? ; :``, the halfwidth ``｡ ､`` and any whitespace (line breaks and
  the ideographic space U+3000 included); empty pieces are dropped.
* :class:`Poem` and :func:`parse_poem`: four lines of five Han characters, with a title
  and an author, and its two layouts. A poem's text may also come without punctuation:
  20 characters in one run, or two couplets of 10, are cut into lines of 5 (the rule of
  the shared data, which the corpus reader keeps).
* :func:`matching_chars`: two poems compared position by position (what reconstruction
  accuracy counts, in ``poetvae.evaluate`` and ``Poet.reconstruct`` alike).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from poetvae.errors import CorpusError

__all__ = [
    "Form",
    "FORM",
    "is_han",
    "SEPARATORS",
    "split_verse",
    "Poem",
    "parse_poem",
    "check_poem",
    "matching_chars",
    "EMPTY",
    "WRONG_LINES",
    "WRONG_LENGTH",
    "NON_HAN",
]


@dataclass(frozen=True)
class Form:
    """The shape of a poem: ``lines`` lines of ``chars_per_line`` characters."""

    lines: int = 4
    chars_per_line: int = 5

    @property
    def chars(self) -> int:
        """Characters in a whole poem (20)."""
        return self.lines * self.chars_per_line

    @property
    def seq_len(self) -> int:
        """Positions in a poem's row of token ids: the characters, then <eos> (21)."""
        return self.chars + 1

    def fits(self, lines: Sequence[str]) -> bool:
        """True when ``lines`` are exactly this form, every character a Han character."""
        return len(lines) == self.lines and all(
            len(line) == self.chars_per_line and all(map(is_han, line)) for line in lines
        )


FORM = Form()

# Short fixed phrases saying why a text is not a poem (corpus.ReadReport counts by them).
EMPTY = "empty"
WRONG_LINES = "wrong number of lines"
WRONG_LENGTH = f"line not {FORM.chars_per_line} characters"
NON_HAN = "non-Han character"

# Line separators: 、，。！？；： plus ASCII and full-width , . ! ? ; :, halfwidth
# ideographic ｡ ､ and any whitespace (\s covers U+3000 and line breaks).
SEPARATORS = re.compile(r"[,.!?;:，。！？；、：．｡､\s]+")
# Anything that is not a Han ideograph. Compatibility ideographs U+2F800-2FA1F lie
# inside the U+20000-3134F range already.
_NON_HAN = re.compile("[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def is_han(ch: str) -> bool:
    """True when ``ch`` is one Han ideograph (the ranges in the module docstring)."""
    return len(ch) == 1 and _NON_HAN.match(ch) is None


# ------------------------------------------------------------------------ splitting


def _pieces(text: str) -> list[str]:
    """NFC-normalise and cut on SEPARATORS; empty pieces dropped."""
    text = unicodedata.normalize("NFC", text.replace("\ufeff", ""))
    return [p for p in SEPARATORS.split(text) if p]


def _cut(piece: str) -> list[str]:
    n = FORM.chars_per_line
    return [piece[i : i + n] for i in range(0, len(piece), n)]


def split_verse(text: str) -> list[str]:
    """The lines of ``text`` (a poem, a few lines a user typed, or one line), cut on
    punctuation and whitespace; an unpunctuated run of 10, 15 or 20 characters is cut
    into lines of 5. ``"床前明月光，疑是地上霜"`` and ``"床前明月光疑是地上霜"`` both
    give ``["床前明月光", "疑是地上霜"]``."""
    out: list[str] = []
    for piece in _pieces(text):
        if len(piece) > FORM.chars_per_line and len(piece) % FORM.chars_per_line == 0:
            out.extend(_cut(piece))
        else:
            out.append(piece)
    return out


def _poem_pieces(text: str) -> list[str]:
    """The pieces of a whole poem's text. Stricter than :func:`split_verse` on purpose:
    only a whole poem in one run, or two couplets, is cut without punctuation, so that
    a corpus keeps exactly the poems the shared data's extraction rule keeps."""
    pieces = _pieces(text)
    couplet = 2 * FORM.chars_per_line
    if len(pieces) == 1 and len(pieces[0]) == FORM.chars:
        return _cut(pieces[0])
    if len(pieces) == 2 and all(len(p) == couplet for p in pieces):
        return [line for p in pieces for line in _cut(p)]
    return pieces


# ---------------------------------------------------------------------------- poems


@dataclass(frozen=True)
class Poem:
    """One 五言绝句: four lines of five characters (simplified), title, author."""

    lines: tuple[str, ...]
    title: str = ""
    author: str = ""

    def __post_init__(self) -> None:
        # Accept any sequence but store a tuple so Poem stays hashable; check the shape
        # here because text/oneline/layout and every model downstream rely on it.
        lines = tuple(self.lines)
        if len(lines) != FORM.lines or any(not isinstance(s, str) or len(s) != FORM.chars_per_line for s in lines):
            raise CorpusError(
                f"a poem needs {FORM.lines} lines of {FORM.chars_per_line} characters, got {list(lines)!r}"
            )
        object.__setattr__(self, "lines", lines)

    @property
    def text(self) -> str:
        """The 20 characters, without punctuation."""
        return "".join(self.lines)

    def _couplets(self) -> list[str]:
        return [f"{a}，{b}。" for a, b in zip(self.lines[::2], self.lines[1::2])]

    def oneline(self) -> str:
        """``床前明月光，疑是地上霜。举头望明月，低头思故乡。``"""
        return "".join(self._couplets())

    def layout(self) -> str:
        """The two couplets on two lines."""
        return "\n".join(self._couplets())


def check_poem(text: str) -> tuple[list[str] | None, str, str]:
    """``(lines, "", "")`` when ``text`` is a poem of the form, else ``(None, reason, detail)``.

    ``reason`` is one of EMPTY, WRONG_LINES, WRONG_LENGTH, NON_HAN; ``detail`` is the
    one-line message :func:`parse_poem` raises. Non-Han characters are reported first
    because they are the most specific problem (an inline note usually also breaks the
    line count or length).
    """
    n, size = FORM.lines, FORM.chars_per_line
    pieces = _poem_pieces(text)
    if not pieces:
        return None, EMPTY, f"empty poem: expected {n} lines of {size} characters"
    for piece in pieces:
        m = _NON_HAN.search(piece)
        if m:
            ch = m.group()
            return None, NON_HAN, f"{ch!r} is not a Han character (U+{ord(ch):04X} in {piece!r})"
    if len(pieces) != n:
        s = "" if len(pieces) == 1 else "s"
        return None, WRONG_LINES, f"expected {n} lines of {size} characters, got {len(pieces)} line{s}"
    for i, piece in enumerate(pieces, 1):
        if len(piece) != size:
            return None, WRONG_LENGTH, f"line {i} {piece!r} has {len(piece)} characters, expected {size}"
    return pieces, "", ""


def parse_poem(text: str) -> Poem:
    """Parse one poem typed by a user; raise :class:`CorpusError` saying what is wrong.

    Accepts any of the separators (full-width or ASCII punctuation, spaces, newlines)
    or none at all (20 Han characters). The text is taken as it is: no
    traditional-to-simplified conversion.
    """
    lines, _reason, detail = check_poem(text)
    if lines is None:
        raise CorpusError(detail)
    return Poem(tuple(lines))


def matching_chars(given: Sequence[str], decoded: Sequence[str]) -> tuple[bool, ...]:
    """Whether each of the ``FORM.chars`` character positions holds the same character in
    both poems (each given as its lines), in reading order. A position that either poem
    lacks (a shorter poem, a word row cut short) counts as different, so the share of
    ``True`` is always out of 20."""
    a, b = "".join(given), "".join(decoded)
    return tuple(i < len(a) and i < len(b) and a[i] == b[i] for i in range(FORM.chars))
