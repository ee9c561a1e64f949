"""Every setting of poetvae, in three plain frozen dataclasses, and the one loader for them.

A setting has one name everywhere: the dataclass field `latent_dim`, the TOML key
`latent_dim` (in the section `[model]`, `[train]` or `[prep]`) and the CLI flag
`--latent-dim`. Precedence, highest first: CLI flag > config file > the defaults below.

    cfg = load_config("configs/small.toml", {"latent_dim": 16})
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from poetvae.errors import ConfigError

# One range for every seed in poetvae (train.seed, prep.split_seed, the --seed of sample,
# interpolate and evaluate): numpy and gensim take seeds in [0, 2**32), and the epoch order's
# seed * 100_003 + epoch (poetvae.train) then stays far below 2**63.
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1  # the largest count a setting may hold (steps, epochs, windows, ...)
# Sizes beyond these are typing errors, not models: they would fail deep inside torch.
MAX_UPPER = {name: 2**16 for name in ("embed_dim", "hidden_dim", "encoder_hidden_dim", "latent_dim")}
MAX_UPPER["batch_size"] = 2**20
MAX_UPPER |= {name: 64 for name in ("highway_layers", "encoder_layers", "decoder_layers")}
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::([0-9]+))?")
MAX_DEVICE_INDEX = 127  # torch keeps a device index in 8 bits: cuda:128 would be read as cuda:-128

# ---- the bounds of the commands' count and size flags (beyond them: a usage error) -------
MAX_POEMS = 10**9  # -n of sample and vary: streamed batch by batch, so only time bounds it
MAX_EVAL_SAMPLES = 10**6  # evaluate --samples: held together for their statistics
MAX_PATH_STEPS = 10_000  # interpolate --steps: the points of a path are decoded together
MAX_BEAM = 256  # --beam
MAX_RERANK = 1024  # --rerank
MAX_DECODE_BATCH = 2**20  # sample --batch-size, bench --sample-batch: poems decoded together
MAX_TRAIN_BATCH = MAX_UPPER["batch_size"]  # train/bench --batch-size
# What decoding holds per candidate and vocabulary entry at once (logits, probabilities,
# masks, the sort of top-p and beam search), and training per poem, position and entry
# (logits, log-softmax and their gradients): the estimate that settings each in range but
# too large together (--beam 256 --rerank 1024) are checked against.
DECODE_BYTES_PER_ENTRY = 32
TRAIN_BYTES_PER_ENTRY = 16


def memory_ceiling() -> int | None:
    """The most memory this process may use, in bytes: the smallest of the machine's RAM,
    the address-space and data limits (ulimit -v, -d) and the cgroup's memory.max; None
    when none can be read."""
    import os
    import resource

    found = []
    try:
        found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit in ("RLIMIT_AS", "RLIMIT_DATA"):
        soft = resource.getrlimit(getattr(resource, limit))[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            found.append(soft)
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        if text.isdigit():
            found.append(int(text))
    except OSError:
        pass
    return min(found) if found else None


def check_memory(what: str, needed: int, advice: str) -> None:
    """ConfigError (one line) when `what` needs more than memory_ceiling() bytes at once."""
    ceiling = memory_ceiling()
    if ceiling is not None and needed > ceiling:
        raise ConfigError(
            f"{what} would need about {needed / 2**30:,.1f} GiB at once, more than the "
            f"{ceiling / 2**30:,.1f} GiB this process may use; {advice}"
        )


def check_decode_memory(rows: int, vocab_size: int, flags: str) -> None:
    """Decoding `rows` candidates together over a vocabulary of `vocab_size` must fit in memory."""
    needed = rows * vocab_size * DECODE_BYTES_PER_ENTRY
    check_memory(f"decoding {rows:,} candidates together ({flags})", needed, "lower them")


def check_train_memory(batch: int, vocab_size: int, flag: str = "--batch-size") -> None:
    """A training step on `batch` poems over a vocabulary of `vocab_size` must fit in memory."""
    from poetvae.form import FORM

    needed = batch * FORM.seq_len * vocab_size * TRAIN_BYTES_PER_ENTRY
    check_memory(f"a training step on {batch:,} poems ({flag} {batch})", needed, f"lower {flag}")


def is_finite_number(value: Any) -> bool:
    """Whether `value` is an int or a float that is neither NaN nor infinite (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def check_finite(name: str, value: Any) -> float:
    """`value` as a float; ConfigError when it is not a finite number."""
    if not is_finite_number(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_seed(name: str, value: Any) -> int:
    """`value` as a seed; ConfigError unless it is an int in [0, MAX_SEED]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        shown = value if not isinstance(value, int) or value.bit_length() <= 64 else "a number beyond 64 bits"
        raise ConfigError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {shown!r}")
    return value


def check_device(name: str) -> str:
    """`name` if it names a device poetvae can run on; ConfigError otherwise."""
    match = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ConfigError(f"unknown device {name!r} (expected {DEVICE_NAMES})")
    index = match.group(1).lstrip("0") if match.group(1) is not None else ""
    if len(index) > 3 or (index and int(index) > MAX_DEVICE_INDEX):
        shown = name if len(name) <= 30 else name[:30] + "…"
        raise ConfigError(f"device {shown}: the index must be at most {MAX_DEVICE_INDEX}")
    return name


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose help text is shown by the CLI and whose choices are checked."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class PrepConfig:
    tokenizer: str = _opt("char", "token unit: single characters, or jieba words", ("char", "jieba"))
    min_count: int = _opt(2, "tokens seen fewer times in the training split map to <unk>")
    valid_fraction: float = _opt(0.05, "share of poems held out for validation")
    test_fraction: float = _opt(0.05, "share of poems held out for the final test")
    split_seed: int = _opt(0, "seed of the train/valid/test shuffle")
    t2s: str = _opt(
        "auto", "traditional->simplified: auto = only the chinese-poetry JSON format", ("auto", "always", "never")
    )
    w2v_epochs: int = _opt(10, "word2vec passes over the training split")
    w2v_window: int = _opt(5, "word2vec context window, in tokens")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = _opt(0, "set from the vocabulary; not a user setting")
    embed_dim: int = _opt(128, "token embedding size (also the word2vec size)")
    highway_layers: int = _opt(2, "highway layers on the embeddings (Srivastava et al. 2015)")
    hidden_dim: int = _opt(256, "LSTM hidden size of the decoder (and of the encoder, per direction, unless set)")
    encoder_hidden_dim: int = _opt(0, "the encoder's LSTM hidden size per direction (0: hidden_dim)")
    encoder_layers: int = _opt(1, "layers of the bidirectional LSTM encoder")
    decoder_layers: int = _opt(1, "layers of the LSTM decoder")
    latent_dim: int = _opt(32, "size of the Gaussian latent z")
    dropout: float = _opt(0.2, "dropout on embeddings and decoder outputs")
    use_latent: bool = _opt(True, "false trains the same decoder as a plain language model (no z)")
    bn_gamma: float = _opt(0.0, "BN-VAE: batch-normalise mu with this fixed scale (Zhu et al. 2020); 0: off")
    form_features: bool = _opt(
        False,
        "tell the decoder at every step the 平仄 of the previous character and of the same place in "
        "the previous line, and line 2's rhyme group (平水韵; char tokenizer only)",
    )
    output_layer: str = _opt(
        "adaptive",
        "the decoder's softmax: adaptive (a head over the frequent characters and clusters of rare ones at "
        "reduced size, Grave et al. 2017; exact, ~4x fewer FLOPs) or full (one linear layer over the vocabulary)",
        ("adaptive", "full"),
    )
    adaptive_head: int = _opt(2000, "adaptive softmax: ids in the head (the most frequent; then clusters of 2x)")
    adaptive_div: float = _opt(2.0, "adaptive softmax: cluster i works at hidden_dim / adaptive_div^(i+1) dims")
    z_skip: str = _opt(
        "none",
        "a skip connection from z to the decoder's output (Dieng et al. 2019), so that it cannot route around "
        "z: shared (one projection of z added at every step) or position (one per character position)",
        ("none", "shared", "position"),
    )


@dataclass(frozen=True)
class TrainConfig:
    seed: int = _opt(0, "fixes initialisation, batch order, noise: a seed fixes a run")
    epochs: int = _opt(18, "passes over the training split")
    max_steps: int = _opt(0, "stop after this many optimizer steps (0: no limit)")
    max_minutes: float = _opt(0.0, "stop after this much training time (0: no limit)")
    batch_size: int = _opt(128, "poems per optimizer step")
    lr: float = _opt(2e-3, "Adam learning rate (at batch size lr_batch, when that is set)")
    lr_batch: int = _opt(
        0,
        "batch size lr was tuned for: another batch_size scales lr by "
        "sqrt(batch_size / lr_batch), the square-root rule for Adam (0: lr as given)",
    )
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(5.0, "clip the global gradient norm to this (0: off)")
    kl_schedule: str = _opt(
        "linear", "how beta (the KL weight) moves over training", ("constant", "linear", "sigmoid", "cyclical")
    )
    kl_max: float = _opt(1.0, "the largest beta")
    kl_warmup_steps: int = _opt(500, "linear/sigmoid: steps to reach kl_max")
    kl_cycles: int = _opt(4, "cyclical: number of cycles over the whole run (Fu et al. 2019)")
    kl_ratio: float = _opt(0.5, "cyclical: share of each cycle spent ramping beta up")
    free_bits: float = _opt(0.25, "KL floor per latent dim, nats (Kingma et al. 2016); 0: off")
    word_dropout: float = _opt(0.0, "share of decoder inputs replaced by <unk> (Bowman et al. 2016)")
    encoder_word_dropout: float = _opt(
        0.0, "share of the encoder's input characters replaced by <unk> (Shen et al. 2020, DAAE)"
    )
    init_reset: str = _opt(
        "none",
        "with --init: start these parts afresh instead of from the init run (decoder: keep the "
        "encoder of an autoencoder run and relearn the decoder, Li et al. 2019)",
        ("none", "decoder"),
    )
    freeze_embeddings: bool = _opt(False, "keep the word2vec embeddings fixed")
    device: str = _opt("auto", "auto (cuda if present), cpu, cuda, cuda:N")
    amp: str = _opt(
        "auto",
        "bf16 autocast: auto = on CUDA and on CPUs with native bf16 (avx512_bf16 or AMX), cuda = on CUDA only, "
        "off = fp32 everywhere",
        ("auto", "cuda", "off"),
    )
    log_every: int = _opt(20, "steps between log lines")


@dataclass(frozen=True)
class Config:
    prep: PrepConfig = field(default_factory=PrepConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"prep": PrepConfig, "model": ModelConfig, "train": TrainConfig}
# vocab_size comes from the data, never from a user.
NOT_USER_SETTINGS = {"vocab_size"}


def user_fields() -> list[tuple[str, dataclasses.Field]]:
    """(section, field) for every setting a user may give, in declaration order."""
    return [(s, f) for s, cls in SECTIONS.items() for f in fields(cls) if f.name not in NOT_USER_SETTINGS]


# What older configs said differently: `amp` was a bool that meant bf16 on CUDA only.
LEGACY_AMP = {True: "cuda", False: "off"}
# Model settings added with a new default: a saved config.json without them is an older
# run's, trained with the value here (its weights fit only that layer).
LEGACY_MODEL = {"output_layer": "full"}


def _check_value(section: str, f: dataclasses.Field, value: Any) -> Any:
    if f.name == "amp" and isinstance(value, bool):
        value = LEGACY_AMP[value]
    want = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    ok = (
        isinstance(value, bool)
        if want is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if want is float
        else isinstance(value, want) and not isinstance(value, bool)
    )
    if not ok:
        raise ConfigError(f"{section}.{f.name} must be {want.__name__}, got {value!r}")
    try:
        value = want(value)
    except OverflowError:  # an int too large for a float
        raise ConfigError(f"{section}.{f.name} must be a finite number, got a number beyond 64 bits") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{section}.{f.name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _validate(cfg: Config) -> Config:
    m, t, p = cfg.model, cfg.train, cfg.prep
    for section, f in user_fields():
        name, v = f"{section}.{f.name}", getattr(getattr(cfg, section), f.name)
        if isinstance(v, float):
            check_finite(name, v)
        elif isinstance(v, int) and not isinstance(v, bool):
            if f.name in ("seed", "split_seed"):
                check_seed(name, v)
            elif v > (upper := MAX_UPPER.get(f.name, MAX_COUNT)):
                shown = v if v.bit_length() <= 64 else "a number beyond 64 bits"
                raise ConfigError(f"{name} must be at most {upper:,}, got {shown}")
    check_device(t.device)
    positive = {
        "model.embed_dim": m.embed_dim,
        "model.hidden_dim": m.hidden_dim,
        "model.latent_dim": m.latent_dim,
        "model.encoder_layers": m.encoder_layers,
        "model.decoder_layers": m.decoder_layers,
        "model.adaptive_head": m.adaptive_head,
        "train.batch_size": t.batch_size,
        "train.epochs": t.epochs,
        "train.lr": t.lr,
        "train.log_every": t.log_every,
        "train.kl_cycles": t.kl_cycles,
        "prep.min_count": p.min_count,
        "prep.w2v_epochs": p.w2v_epochs,
        "prep.w2v_window": p.w2v_window,
    }
    for name, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{name} must be positive, got {v}")
    for name, v in {
        "model.dropout": m.dropout,
        "train.word_dropout": t.word_dropout,
        "train.encoder_word_dropout": t.encoder_word_dropout,
        "train.kl_ratio": t.kl_ratio,
    }.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {v}")
    for name, v in {
        "model.highway_layers": m.highway_layers,
        "model.bn_gamma": m.bn_gamma,
        "train.max_steps": t.max_steps,
        "train.max_minutes": t.max_minutes,
        "train.free_bits": t.free_bits,
        "train.kl_max": t.kl_max,
        "train.kl_warmup_steps": t.kl_warmup_steps,
        "train.grad_clip": t.grad_clip,
        "train.weight_decay": t.weight_decay,
        "train.lr_batch": t.lr_batch,
    }.items():
        if v < 0:
            raise ConfigError(f"{name} must not be negative, got {v}")
    if m.adaptive_div < 1.0:
        raise ConfigError(f"model.adaptive_div must be at least 1, got {m.adaptive_div}")
    if m.form_features and p.tokenizer != "char":
        raise ConfigError("model.form_features needs prep.tokenizer = char (a jieba word spans several tones)")
    if not (0 <= p.valid_fraction < 1 and 0 <= p.test_fraction < 1 and p.valid_fraction + p.test_fraction < 1):
        raise ConfigError("prep.valid_fraction and prep.test_fraction must be in [0, 1) and sum below 1")
    return cfg


def build_config(values: dict[str, dict[str, Any]]) -> Config:
    """Config from {section: {key: value}}; unknown sections/keys and wrong types raise ConfigError."""
    parts = {}
    for section, raw in values.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}] (expected {', '.join(SECTIONS)})")
        if not isinstance(raw, dict):
            raise ConfigError(f"[{section}] must be a table of settings")
        known = {f.name: f for f in fields(SECTIONS[section])}
        checked = {}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(f"unknown config key {section}.{key}")
            checked[key] = _check_value(section, known[key], value)
        parts[section] = SECTIONS[section](**checked)
    return _validate(Config(**parts))


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    fixed: dict[str, Any] | None = None,
    inherited: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the TOML file at `path`, then `overrides` (flat keys: {"latent_dim": 16}).

    `fixed` (flat keys too) holds settings that are not free, such as the model of a run that
    training starts from (its weights fix the sizes): they take the place of the defaults,
    and a value from the file or the overrides that differs raises ConfigError naming it.
    `inherited` (flat keys) take the place of the defaults too, but the file and the
    overrides may change them (an init run's settings that a new run may set afresh)."""
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no such config file: {path}") from None
        except (ValueError, RecursionError) as e:  # TOMLDecodeError, UnicodeDecodeError, a 5000-digit number
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        for section, table in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"{path}: unknown config section [{section}] (expected {', '.join(SECTIONS)})")
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [{section}] must be a table of settings")
            values[section].update(table)
    section_of = {f.name: s for s, f in user_fields()}
    for key, value in (overrides or {}).items():
        if key not in section_of:
            raise ConfigError(f"unknown setting {key}")
        values[section_of[key]][key] = value
    fixed_values = {s: {} for s in SECTIONS}
    for key, value in (fixed or {}).items():
        section = section_of.get(key) or ("model" if key == "vocab_size" else None)
        if section is None:
            raise ConfigError(f"unknown setting {key}")
        fixed_values[section][key] = value
    clashes = [
        f"{section}.{key} = {values[section][key]!r} (it has {value!r})"
        for section, table in fixed_values.items()
        for key, value in table.items()
        if key in values[section] and values[section][key] != value
    ]
    if clashes:
        raise ConfigError(f"settings contradict the run that training starts from: {', '.join(clashes)}")
    for section, table in fixed_values.items():
        values[section].update(table)
    for key, value in (inherited or {}).items():
        values[section_of[key]].setdefault(key, value)
    return build_config(values)


INIT_FROM = "init_from"  # config.json's record of the run a fine-tuning run started from (poetvae.rundir)


def config_from_json(text: str) -> Config:
    """The config saved in a run directory (config.json). Its INIT_FROM entry, when there is
    one, is a record of where the run started, not a setting: it is read by poetvae.rundir."""
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or a number too long to read
        raise ConfigError(f"config.json is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config.json must hold an object of sections, not {type(values).__name__}")
    values.pop(INIT_FROM, None)
    if isinstance(values.get("model"), dict):
        values["model"] = LEGACY_MODEL | values["model"]
    return build_config(values)
