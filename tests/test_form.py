"""Tests for poetvae.form (the shape, the Han test, the splitter, Poem, parse_poem) and
poetvae.files (atomic writes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poetvae.errors import CorpusError
from poetvae.files import atomic_path, atomic_write
from poetvae.form import FORM, Form, Poem, is_han, parse_poem, split_verse

JINGYESI = ("床前明月光", "疑是地上霜", "举头望明月", "低头思故乡")


# ---------------------------------------------------------------------- the form


def test_form_shape() -> None:
    assert (FORM.lines, FORM.chars_per_line, FORM.chars, FORM.seq_len) == (4, 5, 20, 21)
    assert FORM == Form()
    with pytest.raises(AttributeError):
        FORM.lines = 8  # type: ignore[misc]  # one value, shared: it cannot be changed


def test_form_fits() -> None:
    assert FORM.fits(JINGYESI)
    assert FORM.fits(list(JINGYESI))
    assert not FORM.fits(JINGYESI[:3])
    assert not FORM.fits(("床前明月", *JINGYESI[1:]))
    assert not FORM.fits(("床前明月光，", *JINGYESI[1:]))
    assert not FORM.fits(("床前□月光", *JINGYESI[1:]))  # <unk> as the decoder writes it
    assert not FORM.fits(("床前a月光", *JINGYESI[1:]))
    assert FORM.fits(("红炉𬬻火新", *JINGYESI[1:]))  # supplementary plane


# ------------------------------------------------------------------ the Han test


@pytest.mark.parametrize(
    "ch, han",
    [
        ("\u4e00", True),  # first CJK Unified Ideograph
        ("\u9fff", True),  # last
        ("\u3400", True),  # Ext. A first
        ("\u4dbf", True),  # Ext. A last
        ("\u4dc0", False),  # Yijing hexagram symbols, between Ext. A and the main block
        ("\u33ff", False),
        ("\uf900", True),  # compatibility ideographs
        ("\ufaff", True),
        ("\ufb00", False),
        ("\U00020000", True),  # Ext. B first
        ("\U0002f800", True),  # compatibility supplement
        ("\U0003134f", True),  # Ext. G last
        ("\U00031350", False),
        ("\u3007", False),  # 〇 is not in the ranges
        ("□", False),
        ("，", False),
        ("a", False),
        ("\ue000", False),  # private use
        ("", False),
        ("床前", False),  # one character only
    ],
)
def test_is_han_edges(ch: str, han: bool) -> None:
    assert is_han(ch) is han


# ------------------------------------------------------------------- the splitter


def test_split_verse_mixed_punctuation() -> None:
    text = "床前明月光,疑是地上霜。\n举头望明月 ；低头思故乡？\u3000白日依山尽．黄河入海流｡欲穷千里目､更上一层楼!"
    assert split_verse(text) == [*JINGYESI, "白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"]
    assert split_verse("，。\n ") == []
    assert split_verse("\ufeff床前明月光：疑是地上霜") == list(JINGYESI[:2])


def test_split_verse_cuts_unpunctuated_runs() -> None:
    assert split_verse("床前明月光疑是地上霜") == list(JINGYESI[:2])
    assert split_verse("床前明月光疑是地上霜举头望明月，低头思故乡") == list(JINGYESI)
    assert split_verse("床前明月") == ["床前明月"]  # not a multiple of 5: left alone
    assert split_verse("\uf907眠") == ["\u9f9c眠"]  # NFC: the compatibility form is unified


# ----------------------------------------------------------------------- Poem


def test_poem_text_oneline_layout() -> None:
    p = Poem(JINGYESI, "静夜思", "李白")
    assert p.text == "床前明月光疑是地上霜举头望明月低头思故乡"
    assert p.oneline() == "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    assert p.layout() == "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
    assert Poem(list(JINGYESI)) == Poem(JINGYESI)  # a list is stored as a tuple
    assert hash(Poem(list(JINGYESI))) == hash(Poem(JINGYESI))


def test_poem_rejects_wrong_shape() -> None:
    with pytest.raises(CorpusError):
        Poem(JINGYESI[:3])
    with pytest.raises(CorpusError):
        Poem(("床前明月", *JINGYESI[1:]))


# -------------------------------------------------------------- parse_poem


@pytest.mark.parametrize(
    "text",
    [
        "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
        "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
        "床前明月光, 疑是地上霜. 举头望明月, 低头思故乡.",
        "  床前明月光 疑是地上霜\n\n举头望明月 低头思故乡 ",
        "床前明月光\r\n疑是地上霜\r\n举头望明月\r\n低头思故乡\r\n",
        "床前明月光疑是地上霜举头望明月低头思故乡",
        "床前明月光疑是地上霜 举头望明月低头思故乡",
        "\ufeff床前明月光：疑是地上霜！举头望明月；低头思故乡？",
    ],
)
def test_parse_poem_good(text: str) -> None:
    assert parse_poem(text) == Poem(JINGYESI)


@pytest.mark.parametrize(
    "text, message",
    [
        ("床前明月光，疑是地上霜。举头望明月。", "expected 4 lines of 5 characters, got 3 lines"),
        ("床前明月光，疑是地上。举头望明月，低头思故乡。", "line 2 '疑是地上' has 4 characters"),
        ("床前明月光，疑是a上霜。举头望明月，低头思故乡。", "'a' is not a Han character"),
        ("床前明月光（一作看），疑是地上霜。举头望明月，低头思故乡。", "'（' is not a Han character"),
        ("", "empty poem"),
        ("，。\n", "empty poem"),
        ("床前明月光", "got 1 line"),
        ("床前明月光疑是地上霜举头望明月低头思故", "got 1 line"),
    ],
)
def test_parse_poem_bad(text: str, message: str) -> None:
    with pytest.raises(CorpusError) as exc:
        parse_poem(text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


han = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
han_line = st.text(han, min_size=5, max_size=5)


@settings(max_examples=50, deadline=None, database=None)
@given(st.tuples(han_line, han_line, han_line, han_line), st.sampled_from(["，", ", ", " ", "\n", "。", "\u3000", ""]))
def test_parse_poem_roundtrip(lines: tuple[str, str, str, str], sep: str) -> None:
    poem = Poem(lines)
    assert parse_poem(poem.oneline()) == poem
    assert parse_poem(poem.layout()) == poem
    assert parse_poem(sep.join(lines)) == poem


def test_parse_poem_is_stricter_than_split_verse() -> None:
    # A whole poem is cut without punctuation only as one run or two couplets (the
    # shared data's rule): 15 + 5 characters stay two lines.
    with pytest.raises(CorpusError, match="got 2 lines"):
        parse_poem("床前明月光疑是地上霜举头望明月，低头思故乡")


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, "静夜思\n")
    assert path.read_bytes() == "静夜思\n".encode()
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_atomic_path_keeps_old_file_when_body_raises(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_text("old", encoding="utf-8")
    seen: list[Path] = []
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        seen.append(tmp)
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("writer failed")
    assert path.read_text(encoding="utf-8") == "old"
    assert not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["w.txt"]


def test_atomic_path_unique_temp_beside_target(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    with atomic_path(path) as a, atomic_path(path) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert not path.exists()  # nothing is visible until the body returns
        a.write_text("a", encoding="utf-8")
        b.write_text("b", encoding="utf-8")
    assert path.read_text(encoding="utf-8") == "a"  # the last to finish wins
    assert [p.name for p in tmp_path.iterdir()] == ["w.txt"]
