"""Tests for poetvae.prosody: 平水韵 and 中华新韵 tone classes, rhyme groups, poem checks."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from poetvae.errors import ConfigError, CorpusError
from poetvae.form import split_verse
from poetvae.prosody import (
    Tone,
    group_info,
    group_members,
    group_names,
    rhyme_groups,
    rhyme_mask,
    rhyme_ok,
    rhymes,
    token_rhyme_groups,
    token_tones,
    tone_24_ok,
    tone_class,
)

JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
CHUNXIAO = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"


# ---------------------------------------------------------------- pingshui ----


def test_jingyesi_rhyme_chars_in_qiyang() -> None:
    for ch in "光霜乡":
        assert "七阳" in rhyme_groups(ch)
    assert rhymes("光", "霜") and rhymes("霜", "乡") and rhymes("光", "乡")
    assert rhymes("光", "霜", tone=Tone.PING)  # a shared 平 group
    assert rhyme_ok(split_verse(JINGYESI))


def test_chunxiao_ze_rhyme_in_xiao_group() -> None:
    for ch in "晓鸟少":
        assert "十七筱" in rhyme_groups(ch)
    assert group_info("十七筱").section == "上声"
    assert group_info("十七筱").tone is Tone.ZE
    # 仄 groups count as rhyming, but not under a 平-only filter.
    assert rhymes("晓", "鸟")
    assert not rhymes("晓", "鸟", tone=Tone.PING)
    assert rhyme_ok(CHUNXIAO)


def test_known_ping_and_ze_characters() -> None:
    for ch in "天花山":
        assert tone_class(ch) is Tone.PING, ch
    for ch in "月白日":
        assert tone_class(ch) is Tone.ZE, ch
    assert group_info(next(iter(rhyme_groups("白")))).section == "入声"  # 白 is 入声 陌
    assert "十一陌" in rhyme_groups("白")


def test_two_readings_are_both() -> None:
    for ch in "看思听":
        t = tone_class(ch)
        assert t is Tone.BOTH, ch
        assert t.can_be_ping and t.can_be_ze
    assert rhyme_groups("看") >= {"十四寒", "十五翰"}
    assert rhyme_groups("看", tone=Tone.PING) == {"十四寒"}
    assert rhyme_groups("看", tone=Tone.ZE) == {"十五翰"}


def test_unknown_characters() -> None:
    for ch in ("a", "Z", "7", "，"):
        assert tone_class(ch) is Tone.UNKNOWN
        assert rhyme_groups(ch) == frozenset()
        assert tone_class(ch, "xinyun") is Tone.UNKNOWN
    assert not rhymes("a", "a")
    assert not rhymes("a", "光")


def test_traditional_merges_and_hand_lists() -> None:
    # 後 and 后 both map to 后; the traditional form still resolves on its own.
    assert rhyme_groups("陽") == rhyme_groups("阳")
    assert tone_class("東") is Tone.PING
    # Hand supplement for characters the source table lacks, and variant forms.
    assert rhyme_groups("啼") == {"八齐"} and rhymes("啼", "西")
    assert rhyme_groups("隠") == rhyme_groups("隐")


@pytest.mark.parametrize("scheme", ["pingshui", "xinyun"])
def test_rhymes_is_symmetric(scheme: str) -> None:
    chars = "光霜乡晓鸟少天花山月白日看思听a"
    for a in chars:
        for b in chars:
            assert rhymes(a, b, scheme) == rhymes(b, a, scheme)


def test_group_names_and_members() -> None:
    names = group_names()
    assert len(names) == 106 and len(set(names)) == 106
    assert len(group_names(tone=Tone.PING)) == 30
    assert len(group_names(tone=Tone.ZE)) == 76
    assert names[0] == "一东" and names[21] == "七阳"
    members = group_members("七阳")
    assert {"光", "霜", "乡", "阳"} <= members
    # Full and 平声-style spellings resolve to the same group.
    assert group_members("下平七阳") == members == group_members("下平声七阳")
    assert group_info("七阳").full == "下平七阳"
    assert group_members("七阳", tone=Tone.ZE) == frozenset()
    # Every member really lists the group.
    assert all("七阳" in rhyme_groups(c) for c in members)
    with pytest.raises(KeyError):
        group_members("no such group")


def test_shipped_json_is_small_and_simplified() -> None:
    res = resources.files("poetvae").joinpath("prosody_data/pingshui.json")
    data = res.read_bytes()
    assert len(data) < 1_000_000
    table = json.loads(data.decode("utf-8"))
    assert len(table["groups"]) == 106
    assert "光" in next(g["chars"] for g in table["groups"] if g["name"] == "七阳")


def test_unknown_scheme_and_bad_input() -> None:
    with pytest.raises(ConfigError):
        tone_class("光", "guangyun")
    with pytest.raises(ValueError):
        tone_class("光霜")
    with pytest.raises(ValueError):
        rhyme_groups("光", tone=Tone.BOTH)
    with pytest.raises(CorpusError):
        rhyme_ok(["床前明月光", "疑是地上霜"])


# ------------------------------------------------------------ poem helpers ----


def test_tone_24() -> None:
    assert tone_24_ok("床前明月光") is True  # 前 平, 月 仄
    assert tone_24_ok("床前明月光，") is True  # trailing punctuation is ignored
    assert tone_24_ok("春天花山光") is False  # 天 平, 山 平
    assert tone_24_ok("疑是地上霜") is False  # 是 仄, 上 仄
    assert tone_24_ok("举头望明月") is False  # 头 平, 明 平 (静夜思 is a 古绝)
    with pytest.raises(CorpusError):
        tone_24_ok("床前")


def test_tone_24_none_for_ambiguous() -> None:
    assert tone_class("看") is Tone.BOTH
    assert tone_24_ok("春看花月光") is None  # 2nd char 看 is BOTH
    assert tone_24_ok("春天花a光") is None  # 4th char unknown


def test_split_verse_and_rhyme_failure() -> None:
    assert split_verse(JINGYESI) == ["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡"]
    assert not rhyme_ok(["春眠不觉晓", "疑是地上霜", "夜来风雨声", "花落知多少"])


# --------------------------------------------------- decoder vocab helpers ----


def test_vocab_helpers() -> None:
    tokens = ["光", "明月", "<pad>", "", "霜"]
    table = token_rhyme_groups(tokens)
    assert table["明月"] == rhyme_groups("月")  # the last character decides
    assert table["<pad>"] == frozenset() and table[""] == frozenset()
    names, rows = rhyme_mask(tokens, tone=Tone.PING)
    assert names == group_names(tone=Tone.PING)
    j = names.index("七阳")
    assert [row[j] for row in rows] == [True, False, False, False, True]
    assert not any(rows[1])  # 月 is in no 平 group
    assert token_tones(["明月", "a"]) == [(Tone.PING, Tone.ZE), (Tone.UNKNOWN,)]


# ------------------------------------------------------------------ xinyun ----


def test_xinyun_basics() -> None:
    for ch in "光霜乡":
        assert rhyme_groups(ch, "xinyun") == {"十唐"}
    assert rhyme_ok(JINGYESI, "xinyun")
    # 白 is bái (tone 2) today, so 平 in 新韵, but 入声 (仄) in 平水韵.
    assert tone_class("白", "xinyun") is Tone.PING
    assert tone_class("白", "pingshui") is Tone.ZE
    assert tone_class("月", "xinyun") is Tone.ZE
    assert tone_class("看", "xinyun") is Tone.BOTH  # kàn / kān
    # Apical -i (十三支) is kept apart from i (十二齐).
    assert "十三支" in rhyme_groups("日", "xinyun")
    assert rhyme_groups("西", "xinyun") == {"十二齐"}
    assert not rhymes("日", "西", "xinyun")
    assert len(group_names("xinyun")) == 14


def test_xinyun_group_members_with_tone() -> None:
    ping = group_members("十唐", "xinyun", tone=Tone.PING)
    assert {"光", "霜", "乡", "阳"} <= ping
    assert "想" not in ping and "想" in group_members("十唐", "xinyun", tone=Tone.ZE)
    assert "想" in group_members("十唐", "xinyun")


# Pairs that rhymed only through a reading no word attests: 期 qī / 肥 féi (bǐ), 惊 jīng
# (liáng) / 妆 zhuāng, 人 rén / 儿 ér (rén), 亭 tíng / 年 nián (nìng), 时 shí / 台 tái (sì).
@pytest.mark.parametrize("a, b", ["期肥", "惊妆", "人儿", "亭年", "时台"])
def test_xinyun_spurious_readings_do_not_rhyme(a: str, b: str) -> None:
    assert not rhymes(a, b, "xinyun")
    assert not rhyme_groups(a, "xinyun") & rhyme_groups(b, "xinyun")


# Genuine rhymes in the common readings: huā/jiā, rén/chūn (九文), shān/jiān, liú/lóu,
# guāng/shuāng.
@pytest.mark.parametrize("a, b", ["花家", "人春", "山间", "流楼", "光霜"])
def test_xinyun_genuine_rhymes(a: str, b: str) -> None:
    assert rhymes(a, b, "xinyun")
    assert rhymes(a, b, "xinyun", tone=Tone.PING)


def test_xinyun_attested_alternates_are_kept() -> None:
    # 行 xíng (行走) and háng (银行); 重 zhòng (轻重) and chóng (重复).
    assert rhyme_groups("行", "xinyun") == {"十唐", "十一庚"}
    assert rhymes("行", "唐", "xinyun") and rhymes("行", "庚", "xinyun")
    assert rhyme_groups("行", "xinyun", tone=Tone.PING) == {"十唐", "十一庚"}
    assert tone_class("行", "xinyun") is Tone.BOTH  # xíng / hàng
    assert tone_class("重", "xinyun") is Tone.BOTH  # chóng / zhòng
    assert rhyme_groups("重", "xinyun", tone=Tone.PING) == {"十一庚"}
    assert rhyme_groups("重", "xinyun", tone=Tone.ZE) == {"十一庚"}
    assert tone_class("看", "xinyun") is Tone.BOTH  # kàn / kān (看守)


def test_xinyun_spurious_readings_leave_group_members() -> None:
    # The masks ask for members; they come from the same readings as rhyme_groups.
    assert {"惊", "亭", "听"} <= group_members("十一庚", "xinyun")
    assert "惊" not in group_members("十唐", "xinyun")  # liáng is not a reading
    assert "年" not in group_members("十一庚", "xinyun")  # nìng is not a reading
    assert "行" in group_members("十唐", "xinyun") and "行" in group_members("十一庚", "xinyun")
    assert "行" in group_members("十唐", "xinyun", tone=Tone.ZE)  # hàng
    for ch in "惊年台肥舒行重":
        for g in group_names("xinyun"):
            for t in (None, Tone.PING, Tone.ZE):
                assert (ch in group_members(g, "xinyun", tone=t)) == (g in rhyme_groups(ch, "xinyun", tone=t))


@pytest.mark.parametrize(
    "ch, tone",
    [
        ("年", Tone.PING),  # nián, not nìng
        ("肥", Tone.PING),  # féi, not bǐ
        ("舒", Tone.PING),  # shū, not yù
        ("台", Tone.PING),  # tái / tāi, not sì
        ("春", Tone.PING),  # chūn
        ("明", Tone.PING),  # míng
        ("听", Tone.PING),  # tīng, not yǐn
        ("与", Tone.ZE),  # yǔ / yù
    ],
)
def test_xinyun_tone_class_single_without_spurious_readings(ch: str, tone: Tone) -> None:
    assert tone_class(ch, "xinyun") is tone
