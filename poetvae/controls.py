"""The poet's controls, as masks over the vocabulary applied inside the decoder.

    Controls(rhyme=True, tones=True, acrostic="春夏秋冬", prefix=("白日依山尽",))

- acrostic (藏头诗): the first character of each line is fixed.
- prefix: up to 3 whole lines are fixed (a given first line, or more).
  Fixed characters are hard constraints: they are never relaxed.
- rhyme: the last characters of lines 2 and 4 share a rhyme group, and so does the last
  character of line 1 when it is 平 (the form allows line 1 to rhyme or not); each rhyme
  is a character of its own: line 4 never ends on line 2's character (重韵), nor a line on
  the character of an earlier rhyme. Without
  `rhyme_group`, any 平 group (pingshui) or any group (xinyun) may be chosen, by whatever
  the decoder writes first at a rhyme position; with it, that group.
- tones: 二四异 in every line, and the 粘对 pattern of the regular 五绝 across lines, with
  the line endings of the form (line 2 and 4 平, line 3 仄). Which of the 仄起/平起
  variants is decided by the first character of definite tone the decoder writes at a
  pattern position. Characters of BOTH or UNKNOWN tone are always allowed.

When the constraints leave no candidate for a row at some step, that row backs off for
that step: tones are dropped first, then the rhyme group; fixed characters and the 4x5
form never are. Each back-off is recorded per poem.

Everything is a tensor over (rows, vocabulary) so the whole batch is constrained at once.
A position p is a character index 0..19 in the poem; a token starting at p covers
p .. p + token_chars - 1 (more than one character only for jieba words).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from poetvae import prosody
from poetvae.errors import ConfigError, VocabError
from poetvae.form import FORM, is_han, split_verse
from poetvae.vocab import SPECIALS, Vocab

NONE, PING, ZE = 0, 1, 2  # required tone at a position / definite tone of a character
# What decoding may relax, as the columns of a Generation's backoff: the controls' tones,
# then their rhyme (in that order), and the repetition rule (poetvae.repetition), which
# gives way before either.
BACKOFF_NAMES = ("tones", "rhyme", "repeats")

# 粘对: the tone required at the 2nd (c=1) and 4th (c=3) character of each line, as
# "same as s" (True) or "opposite of s" (False), where s is the tone of line 1's 2nd char.
# 平起: 平平平仄仄 / 仄仄仄平平 / 仄仄平平仄 / 平平仄仄平 -> lines 1 and 4 follow s at c=1.
_SAME_AS_S = {
    (0, 1): True,
    (0, 3): False,
    (1, 1): False,
    (1, 3): True,
    (2, 1): False,
    (2, 3): True,
    (3, 1): True,
    (3, 3): False,
}
_ENDINGS = {1: PING, 2: ZE, 3: PING}  # line index -> tone of its last character
_RHYME_ENDS = (2 * FORM.chars_per_line - 1, 4 * FORM.chars_per_line - 1)  # positions 9 and 19
_FIRST_END = FORM.chars_per_line - 1  # position 4: rhymes only when 平


@dataclass(frozen=True)
class Controls:
    rhyme: bool = False
    rhyme_group: str | None = None  # implies rhyme
    scheme: str = "pingshui"  # pingshui (平水韵) or xinyun (中华新韵)
    tones: bool = False
    acrostic: str | None = None  # 4 Han characters, one per line
    prefix: tuple[str, ...] = field(default_factory=tuple)  # up to 3 lines of 5 characters

    def __post_init__(self) -> None:
        if self.scheme not in prosody.SCHEMES:
            raise ConfigError(f"unknown rhyme scheme {self.scheme!r} (expected {' or '.join(prosody.SCHEMES)})")
        if self.acrostic is not None and (len(self.acrostic) != FORM.lines or not all(map(is_han, self.acrostic))):
            raise ConfigError(f"an acrostic is 4 Han characters, one per line; got {self.acrostic!r}")
        if len(self.prefix) > FORM.lines - 1:
            raise ConfigError(f"a prefix is at most {FORM.lines - 1} lines; got {len(self.prefix)}")
        for i, line in enumerate(self.prefix, 1):
            if len(line) != FORM.chars_per_line or not all(map(is_han, line)):
                raise ConfigError(f"prefix line {i} {line!r} is not 5 Han characters")
            if self.acrostic and line[0] != self.acrostic[i - 1]:
                raise ConfigError(
                    f"prefix line {i} {line!r} does not start with acrostic character {self.acrostic[i - 1]}"
                )
        if self.rhyme_group is not None:
            try:
                prosody.group_info(self.rhyme_group, self.scheme)
            except KeyError:
                raise ConfigError(f"no {self.scheme} rhyme group named {self.rhyme_group!r}") from None

    @property
    def wants_rhyme(self) -> bool:
        return self.rhyme or self.rhyme_group is not None

    @property
    def active(self) -> bool:
        return self.wants_rhyme or self.tones or bool(self.acrostic) or bool(self.prefix)

    def fixed_chars(self) -> dict[int, str]:
        """position -> character fixed there by the acrostic and the prefix."""
        fixed = {i * FORM.chars_per_line: ch for i, ch in enumerate(self.acrostic or "")}
        for i, line in enumerate(self.prefix):
            fixed.update({i * FORM.chars_per_line + c: ch for c, ch in enumerate(line)})
        return fixed


def given_lines(text: str | None) -> tuple[str, ...]:
    """The lines of a given first line or prefix as typed (`--first-line`, `--prefix`, the
    web API's first_line / prefix), cut by form.split_verse; () for None. ConfigError when
    the text holds no characters at all (Controls checks the lines themselves)."""
    if text is None:
        return ()
    lines = tuple(split_verse(text))
    if not lines:
        raise ConfigError(f"the given lines {text!r} hold no characters")
    return lines


class ControlTables:
    """Per-vocabulary tensors for one Controls, built once and reused for every step."""

    def __init__(self, controls: Controls, vocab: Vocab, device: torch.device | str = "cpu"):
        self.controls = c = controls
        tokens = vocab.tokens
        v = len(tokens)
        chars = vocab.token_chars()
        self.token_chars = chars.to(device)
        self.max_chars = int(chars.max())
        real = [t if i >= len(SPECIALS) else "" for i, t in enumerate(tokens)]

        # fixed characters: fixed_ok[p, t] = token t may start at position p
        fixed = c.fixed_chars()
        fixed_ok = torch.ones(FORM.chars + 1, v, dtype=torch.bool)
        # only start positions from which a token can reach a fixed character need a look
        for p in sorted({q - k for q in fixed for k in range(self.max_chars) if q - k >= 0}):
            for t, tok in enumerate(real):
                if any(fixed.get(p + k, ch) != ch for k, ch in enumerate(tok)):
                    fixed_ok[p, t] = False
        # every fixed character must exist as a token of its own (always true of a character
        # vocabulary; a jieba vocabulary keeps every character above min_count too)
        vocab.require_known(["".join(ch for _, ch in sorted(fixed.items()))])
        self.fixed_ok = fixed_ok.to(device)

        # each token's last character, as an id (-1: none), so that a rhyme can be told apart
        # from the same character again (重韵)
        last_ids: dict[str, int] = {}
        self.last_char = torch.tensor([last_ids.setdefault(t[-1], len(last_ids)) if t else -1 for t in real]).to(device)

        # rhyme groups of each token's last character
        names, rows = prosody.rhyme_mask(real, c.scheme)  # specials are "" -> no group
        self.end_groups = torch.tensor(rows, dtype=torch.bool).view(v, len(names)).to(device)
        if c.rhyme_group is not None:
            wanted = {prosody.group_info(c.rhyme_group, c.scheme).name}
        elif c.scheme == "pingshui":
            wanted = set(prosody.group_names(c.scheme, prosody.Tone.PING))  # a regular 五绝 rhymes in 平
        else:
            wanted = set(names)
        self.start_groups = torch.tensor([n in wanted for n in names], dtype=torch.bool, device=device)
        if c.wants_rhyme and not (self.end_groups[:, self.start_groups]).any():
            raise VocabError(f"no character of the vocabulary is in rhyme group {c.rhyme_group}")

        # tones per character offset: definite tone (NONE for BOTH/UNKNOWN/beyond the token)
        definite = torch.zeros(v, FORM.chars_per_line, dtype=torch.long)
        for t, tones in enumerate(prosody.token_tones(real, c.scheme) if c.tones or c.wants_rhyme else []):
            for k, tone in enumerate(tones[: FORM.chars_per_line]):
                definite[t, k] = PING if tone is prosody.Tone.PING else ZE if tone is prosody.Tone.ZE else NONE
        self.definite = definite.to(device)
        self.end_tone = definite.gather(1, (chars.clamp(min=1) - 1)[:, None]).squeeze(1).to(device)

        # required tone per position, for s = NONE (pattern undecided), PING, ZE
        req = torch.zeros(3, FORM.chars + 1, dtype=torch.long)
        pattern_pos = torch.zeros(FORM.chars + 1, dtype=torch.bool)
        same_as_s = torch.zeros(FORM.chars + 1, dtype=torch.bool)
        if c.tones:
            for line, tone in _ENDINGS.items():
                req[:, line * FORM.chars_per_line + FORM.chars_per_line - 1] = tone
            for (line, col), same in _SAME_AS_S.items():
                q = line * FORM.chars_per_line + col
                pattern_pos[q], same_as_s[q] = True, same
                req[PING, q] = PING if same else ZE
                req[ZE, q] = ZE if same else PING
        self.required = req.to(device)
        self.pattern_pos = pattern_pos.to(device)
        self.same_as_s = same_as_s.to(device)

        # Per start position, what each token would be checked against: most steps of a
        # poem check nothing, and there the decoder keeps its cheap mask (see `active_at`).
        starts = torch.arange(FORM.chars + 1)[:, None]
        real_end = (starts + chars[None, :] - 1).masked_fill(chars[None, :] == 0, -1)  # (21, V); -1: ends nothing
        rhyme_end = (
            (real_end == _RHYME_ENDS[0])
            | (real_end == _RHYME_ENDS[1])
            | ((real_end == _FIRST_END) & (self.end_tone.cpu() == PING)[None, :])
        )
        self.rhyme_check = rhyme_end.to(device)  # (21, V): a token starting here ends on a rhyme
        self.rhyme_at = rhyme_end.any(dim=1).to(device)  # (21,)
        self.end_groups_t = self.end_groups.float().T.contiguous()  # (G, V), for one product per step
        # tone_allowed[k][r, t]: token t may cover offset k of a position that requires tone r
        self.tone_allowed = []
        for k in range(self.max_chars):
            d = definite[:, k]
            ok = torch.stack([torch.ones(v, dtype=torch.bool), (d == NONE) | (d == PING), (d == NONE) | (d == ZE)])
            self.tone_allowed.append((ok | (chars <= k)[None, :]).to(device))
        # clash[col, t]: token t, starting at column col of a line, covers both the 2nd and the
        # 4th character with one tone (possible only from columns 0 and 1)
        clash = torch.zeros(FORM.chars_per_line, v, dtype=torch.bool)
        for start in (0, 1):
            a, b = definite[:, 1 - start], definite[:, 3 - start]
            clash[start] = (chars > 3 - start) & (a != NONE) & (a == b)
        self.clash = clash.to(device)
        active = ~fixed_ok.all(dim=1)
        if c.wants_rhyme:
            active |= rhyme_end.any(dim=1)
        if c.tones:
            for p in range(FORM.chars + 1):
                covered = range(p, min(p + self.max_chars, FORM.chars + 1))
                active[p] |= bool((req[:, list(covered)] != NONE).any())
                active[p] |= self.max_chars > 2 and bool(clash[p % FORM.chars_per_line].any())
        self.active_at = active.to(device)  # (21,): some token starting here is constrained

    # ---- per-row state -------------------------------------------------------------------
    def initial_state(self, batch: int) -> dict[str, Tensor]:
        device = self.fixed_ok.device
        return {
            "tone_pattern": torch.zeros(batch, dtype=torch.long, device=device),  # 粘对: NONE until decided
            "groups": self.start_groups.expand(batch, -1).clone(),  # rhyme groups still open
            "rhymed": torch.full((batch, 2), -1, dtype=torch.long, device=device),  # the rhymes so far (last_char)
            "backoff": torch.zeros(batch, len(BACKOFF_NAMES), dtype=torch.bool, device=device),
        }

    def mask(self, base: Tensor, chars_written: Tensor, state: dict[str, Tensor]) -> Tensor:
        """Allowed tokens (B, V) given the format mask `base` and the rows' positions;
        records back-offs in state["backoff"]."""
        c = self.controls
        p = chars_written.clamp(max=FORM.chars)
        hard = base & self.fixed_ok[p]
        allowed = hard
        if c.wants_rhyme and bool(self.rhyme_at[p].any()):
            in_group = (state["groups"].float() @ self.end_groups_t) > 0  # (B, V): ends in an open group
            rhymed = state["rhymed"]
            again = (self.last_char == rhymed[:, :1]) | (self.last_char == rhymed[:, 1:])  # 重韵
            allowed = allowed & (~self.rhyme_check[p] | (in_group & ~again))
        with_rhyme = allowed
        if c.tones:
            req = self.required[state["tone_pattern"]]  # (B, 21)
            for k in range(self.max_chars):
                r = req.gather(1, (p + k).clamp(max=FORM.chars)[:, None]).squeeze(1)  # (B,)
                allowed = allowed & self.tone_allowed[k][r]
            if self.max_chars > 2:
                allowed = allowed & ~self.clash[p % FORM.chars_per_line]
        for i, relaxed in enumerate((with_rhyme, hard)):  # tones first, then rhyme
            if relaxed is allowed:  # nothing stricter was applied at this level
                continue
            stuck = ~allowed.any(dim=1)
            if not stuck.any():
                break
            state["backoff"][:, i] |= stuck
            allowed = torch.where(stuck[:, None], relaxed, allowed)
        return allowed

    def update(self, token: Tensor, chars_written: Tensor, state: dict[str, Tensor]) -> None:
        """Advance the rows' state after `token` was written at position `chars_written`."""
        c = self.controls
        n = self.token_chars[token]
        if c.tones:
            for k in range(self.max_chars):
                q = (chars_written + k).clamp(max=FORM.chars)
                d = self.definite[token, k]
                decide = (state["tone_pattern"] == NONE) & (n > k) & self.pattern_pos[q] & (d != NONE)
                pattern = torch.where(self.same_as_s[q], d, PING + ZE - d)
                state["tone_pattern"] = torch.where(decide, pattern, state["tone_pattern"])
        if c.wants_rhyme:
            g = self.end_groups[token]  # (B, G)
            sets_group = self.rhyme_check[chars_written.clamp(max=FORM.chars), token]
            # a rhyme: its character goes in the first free slot (two at most before line 4)
            rhymed = state["rhymed"]
            slot = (rhymed[:, 0] >= 0).long()
            new = rhymed.scatter(1, slot[:, None], self.last_char[token][:, None])
            state["rhymed"] = torch.where(sets_group[:, None], new, rhymed)
            narrowed = state["groups"] & g
            # after a back-off the chosen ending may share no open group: start from it
            narrowed = torch.where(narrowed.any(dim=1, keepdim=True), narrowed, g & self.start_groups)
            state["groups"] = torch.where(sets_group[:, None] & g.any(dim=1, keepdim=True), narrowed, state["groups"])


def backoff_report(backoff: Tensor) -> list[list[str]]:
    """Per poem, the names of the constraints that had to be relaxed somewhere."""
    return [[name for name, hit in zip(BACKOFF_NAMES, row) if hit] for row in backoff.tolist()]
