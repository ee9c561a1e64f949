"""Reading, validating and splitting corpora of 五言绝句 (five-character quatrains).

A poem here is a :class:`poetvae.form.Poem`: exactly four lines of exactly five Han
ideographs, in simplified characters. The rules follow the extraction rules of the
shared data (``../shared/data/README.md``), so that reading the upstream chinese-poetry
files with this module keeps the same poems the shared files hold. The first two are
:func:`poetvae.form.check_poem`'s, and the poem type, the splitter and the Han test live
in :mod:`poetvae.form`; this module adds files, formats, conversion and splits:

* a poem's text is split into lines on punctuation (``，。！？；、：`` and the ASCII
  and full-width forms of ``, . ! ? ; :``) and on any whitespace, including line
  breaks and the ideographic space U+3000; empty pieces are dropped;
* a poem is kept only if that gives 4 pieces of 5 Han ideographs each (CJK Unified
  Ideographs, Ext. A, Ext. B-G U+20000-3134F, compatibility ideographs). Any other
  character (brackets of an inline note ``（一作…）``, ``□``, digits, letters,
  private-use code points, ...) rejects the poem. As a convenience, a body of exactly
  20 ideographs with no punctuation at all, or two halves of 10, is cut into lines of 5;
* text is NFC-normalised; traditional characters are converted to simplified with
  OpenCC ``t2s`` (by default only for the chinese-poetry format, which upstream stores
  in traditional characters);
* duplicates (same simplified 20 characters) are dropped, the first one kept.

Formats are detected from a file's content, never its name. A gzip-compressed file (any
name: ``tang.jsonl.gz``, ``poems.txt.gz``) is decompressed first and then read like its
plain form; it is recognised by gzip's two magic bytes, which no UTF-8 text begins with
(0x8b cannot follow 0x1f in UTF-8).

``chinese-poetry``
    A JSON list of ``{"title", "author", "paragraphs": [...], ...}`` (upstream layout).
    Detected when the first non-blank character is ``[``.
``jsonl``
    One JSON object per line with ``body`` (a list of line strings or one string of the
    whole poem) and optional ``title`` and ``author``. Detected by a leading ``{``.
``lines``
    Plain text, one whole poem per line. Chosen when most non-blank lines hold a whole
    poem (16 or more characters besides separators); blank lines are ignored.
``stanzas``
    Plain text, one verse (or one couplet) per line, a blank line between poems.
    Chosen when the lines are shorter than a poem and blank lines split the file into
    blocks, most of them of more than one line; each block is one poem. A file with no
    blank line at all is grouped too when it is unambiguous: every line 5 characters
    (groups of 4 lines) or every line 10 characters (groups of 2), or a single block of
    at most 4 lines (one poem). Anything else is read as ``lines``, and the report then
    says why each line was rejected. Separate poems with blank lines to be safe.

Everything a user can get wrong raises :class:`poetvae.errors.CorpusError` with a
one-line message; poems that merely fail the rules are skipped and counted in the
:class:`ReadReport` with a few examples, so a caller can show why.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poetvae.errors import CorpusError
from poetvae.files import atomic_write
from poetvae.form import EMPTY, FORM, NON_HAN, SEPARATORS, WRONG_LENGTH, WRONG_LINES, Poem, check_poem, is_han

__all__ = [
    "ReadReport",
    "read_corpus",
    "split_corpus",
    "write_poems",
    "load_poems",
    "FORMATS",
    "SKIP_REASONS",
]

FORMATS = ("lines", "stanzas", "jsonl", "chinese-poetry")

# Short fixed phrases used as keys of ReadReport.skipped / .examples: why poetvae.form
# rejects a text, and one more for the conversion to simplified characters.
T2S_LENGTH = "t2s changed line length"
SKIP_REASONS = (EMPTY, WRONG_LINES, WRONG_LENGTH, NON_HAN, T2S_LENGTH)

_MAX_EXAMPLES = 3
_EXAMPLE_CHARS = 26

# The first two bytes of every gzip file (RFC 1952): never the start of UTF-8 text.
_GZIP_MAGIC = b"\x1f\x8b"

# A plain-text line this long (separators excluded) is a whole poem, not a verse.
_POEM_LIKE = 16


@dataclass
class ReadReport:
    """What :func:`read_corpus` saw: ``read == kept + duplicates + sum(skipped)``."""

    files: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    read: int = 0
    kept: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    converted_t2s: int = 0

    def _skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(example)

    def skipped_summary(self) -> str:
        """``wrong number of lines 12, non-Han character 3`` (most frequent first)."""
        return ", ".join(f"{r} {n}" for r, n in self.skipped.most_common()) or "none"


# --------------------------------------------------------------------------- t2s

_T2S: Any = None


def _t2s_converter() -> Any:
    """The OpenCC t2s converter, created once on first use (loading it takes a while)."""
    global _T2S
    if _T2S is None:
        try:
            import opencc
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CorpusError("traditional-to-simplified conversion needs OpenCC: pip install opencc") from e
        _T2S = opencc.OpenCC("t2s")
    return _T2S


# ------------------------------------------------------------------------ reading


@dataclass
class _Candidate:
    """One poem as found in a file, before validation."""

    where: str  # "name:line" or "name#entry", for examples
    text: str
    title: str = ""
    author: str = ""


MAX_CORPUS_BYTES = 2 * 2**30  # the most a corpus file may hold, uncompressed (2 GiB)


def _size(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n:,} bytes"


def _check_decompressed_size(data: bytes, path: Path) -> None:
    """CorpusError when the gzip data decompresses to more than MAX_CORPUS_BYTES, found by
    decompressing it a block at a time and keeping none of it (a few MB of gzip can hold
    terabytes of zeros)."""
    total = 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        while block := f.read(1 << 20):
            total += len(block)
            if total > MAX_CORPUS_BYTES:
                raise CorpusError(
                    f"{path} decompresses to more than {_size(MAX_CORPUS_BYTES)}, more than a corpus file may hold"
                )


def _read_text(path: Path) -> str:
    """Read a file as UTF-8 text (BOM stripped, CRLF/CR -> LF), decompressing it first when
    it is gzip, or raise CorpusError."""
    if not path.exists():
        raise CorpusError(f"no such file: {path}")
    if path.is_dir():
        raise CorpusError(f"{path} is a directory, not a corpus file")
    try:
        if path.stat().st_size > MAX_CORPUS_BYTES:
            raise CorpusError(f"{path} is larger than {_size(MAX_CORPUS_BYTES)}, more than a corpus file may hold")
        # Bytes, then a strict decode: this gives the offset of a bad byte, which a
        # text-mode open(encoding="utf-8") would not.
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from e
    compressed = data.startswith(_GZIP_MAGIC)
    if compressed:
        try:
            _check_decompressed_size(data, path)  # counted, not kept: a gzip bomb costs no memory
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # a damaged or truncated file
            raise CorpusError(f"{path} is not a readable gzip file ({e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"offset {e.start}" + (" of the decompressed text" if compressed else "")
        raise CorpusError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at {where})") from e
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _str_field(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _parse_jsonl(text: str, path: Path) -> Iterator[_Candidate]:
    name = path.name
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path} line {lineno}: invalid JSON: {e.msg}") from e
        except (ValueError, RecursionError) as e:  # nested too deep, or a number too long to read
            raise CorpusError(f"{path} line {lineno}: unreadable JSON ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{path} line {lineno}: expected a JSON object")
        body = obj.get("body", obj.get("paragraphs"))
        if body is None:
            raise CorpusError(f"{path} line {lineno}: object has no 'body' field")
        if isinstance(body, list) and all(isinstance(s, str) for s in body):
            # Newline is a separator, so list items may be verses or whole couplets.
            body_text = "\n".join(s.strip() for s in body)
        elif isinstance(body, str):
            body_text = body
        else:
            raise CorpusError(f"{path} line {lineno}: 'body' must be a string or a list of strings")
        yield _Candidate(f"{name}:{lineno}", body_text, _str_field(obj, "title"), _str_field(obj, "author"))


def _parse_chinese_poetry(text: str, path: Path) -> Iterator[_Candidate]:
    name = path.name
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path} line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from e
    except (ValueError, RecursionError) as e:  # nested too deep, or a number too long to read
        raise CorpusError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a JSON list of poems")
    for i, obj in enumerate(data):
        paragraphs = obj.get("paragraphs") if isinstance(obj, dict) else None
        if isinstance(paragraphs, str):
            paragraphs = [paragraphs]
        if not isinstance(paragraphs, list) or not all(isinstance(s, str) for s in paragraphs):
            raise CorpusError(f"{path} entry {i}: expected an object with a 'paragraphs' list of strings")
        # README rule 1: join the paragraphs, each stripped. Joined with no separator,
        # exactly as the README does, so a paragraph break alone never splits a line.
        body_text = "".join(s.strip() for s in paragraphs)
        yield _Candidate(f"{name}#{i}", body_text, _str_field(obj, "title"), _str_field(obj, "author"))


def _plain_format(lines: list[str]) -> tuple[str, list[tuple[int, list[str]]]]:
    """Decide lines vs stanzas; return the format and the groups (first line no, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            if not current:
                start = lineno
            current.append(line)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))

    nonblank = [(s + k, line) for s, block in blocks for k, line in enumerate(block)]
    as_lines = [(n, [line]) for n, line in nonblank]
    sizes = [len(SEPARATORS.sub("", line)) for _, line in nonblank]
    if sum(s >= _POEM_LIKE for s in sizes) * 2 > len(sizes):
        return "lines", as_lines
    if len(blocks) >= 2:
        if sum(len(b) > 1 for _, b in blocks) * 2 > len(blocks):
            return "stanzas", blocks
        return "lines", as_lines
    # One block (no blank line between poems): group only when it is unambiguous.
    start, block = blocks[0]
    for size in (FORM.chars_per_line, 2 * FORM.chars_per_line):
        per_poem = FORM.chars // size
        if all(s == size for s in sizes) and len(block) % per_poem == 0:
            return "stanzas", [(start + i, block[i : i + per_poem]) for i in range(0, len(block), per_poem)]
    if len(block) <= FORM.lines:
        return "stanzas", blocks
    return "lines", as_lines


def _detect_and_parse(text: str, path: Path) -> tuple[str, list[_Candidate]]:
    """Detect a file's format from its content and return its candidate poems."""
    head = text.lstrip()
    if not head:
        return "empty", []
    if head[0] == "[":
        return "chinese-poetry", list(_parse_chinese_poetry(text, path))
    if head[0] == "{":
        return "jsonl", list(_parse_jsonl(text, path))
    fmt, groups = _plain_format(text.split("\n"))
    name = path.name
    return fmt, [_Candidate(f"{name}:{n}", "\n".join(g)) for n, g in groups]


def _example(cand: _Candidate, detail: str) -> str:
    raw = " / ".join(s.strip() for s in cand.text.strip().split("\n") if s.strip())
    if len(raw) > _EXAMPLE_CHARS:
        raw = raw[:_EXAMPLE_CHARS] + "…"
    return f"{cand.where}: {raw} ({detail})"


def read_corpus(paths: Sequence[str | Path], t2s: str = "auto") -> tuple[list[Poem], ReadReport]:
    """Read corpus files in any supported format; return the valid unique poems.

    ``t2s``: ``"auto"`` converts traditional to simplified for the chinese-poetry
    format only, ``"always"`` for every file, ``"never"`` for none.
    Raises :class:`CorpusError` for unreadable or malformed files, and when no valid
    poem at all is left over all the files.
    """
    if t2s not in ("auto", "always", "never"):
        raise CorpusError(f"t2s must be 'auto', 'always' or 'never', not {t2s!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]  # a single path is an easy mistake; a str would iterate by char
    if not paths:
        raise CorpusError("no corpus files given")

    report = ReadReport()
    poems: list[Poem] = []
    seen: set[str] = set()
    for p in paths:
        path = Path(p)
        key = str(p)
        report.files.append(key)
        fmt, candidates = _detect_and_parse(_read_text(path), path)
        report.formats[key] = fmt
        convert = t2s == "always" or (t2s == "auto" and fmt == "chinese-poetry")
        cc = _t2s_converter() if convert and candidates else None
        for cand in candidates:
            report.read += 1
            lines, reason, detail = check_poem(cand.text)
            if lines is None:
                report._skip(reason, _example(cand, detail))
                continue
            title = unicodedata.normalize("NFC", cand.title)
            author = unicodedata.normalize("NFC", cand.author)
            if cc is not None:
                # Line by line, as the README does: OpenCC matches phrases, so
                # converting the joined text could differ at line boundaries.
                simple = [cc.convert(s) for s in lines]
                bad = next((s for s in simple if len(s) != FORM.chars_per_line or not all(map(is_han, s))), None)
                if bad is not None:
                    report._skip(T2S_LENGTH, _example(cand, f"converted to {bad!r}"))
                    continue
                if simple != lines:
                    report.converted_t2s += 1
                lines = simple
                title, author = cc.convert(title), cc.convert(author)
            body = "".join(lines)
            if body in seen:
                report.duplicates += 1
                continue
            seen.add(body)
            poems.append(Poem(tuple(lines), title, author))
    report.kept = len(poems)

    if not poems:
        where = ", ".join(report.files)
        if report.read == 0:
            raise CorpusError(f"no valid 五言绝句 in {where}: no poems found (empty)")
        raise CorpusError(
            f"no valid 五言绝句 in {where}: {report.read} read, "
            f"{report.duplicates} duplicates, skipped by reason: {report.skipped_summary()}"
        )
    return poems, report


# ---------------------------------------------------------------------- splitting


def split_corpus(
    poems: Sequence[Poem], valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Poem]]:
    """Shuffle a copy with ``random.Random(seed)`` and cut it into train/valid/test.

    Sizes are the rounded fractions, but a split whose fraction is > 0 gets at least
    one poem and train always keeps at least one, so tiny corpora still give usable
    splits. Raises :class:`CorpusError` for bad fractions or a corpus too small.
    """
    for label, f in (("valid", valid_fraction), ("test", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise CorpusError(f"{label} fraction must be in [0, 1), got {f}")
    if valid_fraction + test_fraction >= 1.0:
        raise CorpusError(f"valid + test fractions must be below 1, got {valid_fraction + test_fraction}")
    n = len(poems)
    need = 1 + (valid_fraction > 0) + (test_fraction > 0)
    if n < need:
        raise CorpusError(f"corpus too small to split: {n} poem{'s' if n != 1 else ''}, need at least {need}")
    n_valid = max(round(n * valid_fraction), 1 if valid_fraction > 0 else 0)
    n_test = max(round(n * test_fraction), 1 if test_fraction > 0 else 0)
    # Rounding up both held-out splits can leave train empty on tiny corpora: give
    # poems back from the larger held-out split, never taking one below 1.
    while n - n_valid - n_test < 1:
        if n_valid >= n_test and n_valid > 1:
            n_valid -= 1
        else:
            n_test -= 1

    shuffled = list(poems)
    random.Random(seed).shuffle(shuffled)
    return {
        "train": shuffled[n_valid + n_test :],
        "valid": shuffled[:n_valid],
        "test": shuffled[n_valid : n_valid + n_test],
    }


# ------------------------------------------------------------------ poem files


def write_poems(path: Path, poems: Sequence[Poem]) -> None:
    """Write one poem per line in :meth:`Poem.oneline` form, atomically."""
    atomic_write(path, "".join(poem.oneline() + "\n" for poem in poems))


def load_poems(path: Path) -> list[Poem]:
    """Read a file written by :func:`write_poems`, strictly, duplicates included.

    Every non-blank line must be a valid poem (no conversion is done); an empty file
    gives ``[]``. Titles and authors are not stored by :func:`write_poems`.
    """
    path = Path(path)
    poems: list[Poem] = []
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        lines, _reason, detail = check_poem(line)
        if lines is None:
            raise CorpusError(f"{path} line {lineno}: {detail}")
        poems.append(Poem(tuple(lines)))
    return poems
