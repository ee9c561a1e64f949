"""`poetvae train`: one explicit training loop, no framework.

    result = train(load_config(), prepared_data, "runs/default")

Batches are dense (N, 21) id tensors that live on the device for the whole run (every
quatrain has the same length, and the whole corpus fits), indexed by a per-epoch
permutation: no DataLoader, no padding logic, no per-poem Python work per step.

Determinism: `train.seed` fixes initialisation; the batch order of epoch e comes from a
generator seeded by (seed, e) alone, so a resumed run can skip to the middle of an epoch;
all other noise (dropout, word dropout, z ~ q) draws from torch's global RNG, whose state
is saved in every resume point.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from poetvae import checkpoint as ckpt
from poetvae import rundir
from poetvae.config import Config, TrainConfig
from poetvae.distributed import Dist, global_mean, setup, teardown
from poetvae.errors import ConfigError
from poetvae.evaluate import elbo_terms
from poetvae.form import FORM
from poetvae.hardware import keep_freed_memory, resolve_device
from poetvae.model import PoetVAE
from poetvae.prep import PreparedData


def kl_weight(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """beta at optimizer step `step` (0-based) of a run of `total_steps` steps.

    constant: kl_max throughout.
    linear:   0 -> kl_max over kl_warmup_steps, then flat (Bowman et al. 2016).
    sigmoid:  logistic ramp centred on kl_warmup_steps / 2, flat at kl_max after it.
    cyclical: kl_cycles cycles over the run; in each, beta ramps 0 -> kl_max over the
              first kl_ratio of the cycle and stays at kl_max for the rest (Fu et al. 2019).
    """
    s, b = cfg.kl_schedule, cfg.kl_max
    if s == "constant":
        return b
    if s == "linear":
        return b * min(1.0, step / cfg.kl_warmup_steps) if cfg.kl_warmup_steps > 0 else b
    if s == "sigmoid":
        if cfg.kl_warmup_steps <= 0 or step >= cfg.kl_warmup_steps:
            return b
        k = 10.0 / cfg.kl_warmup_steps  # reaches ~0.7% and ~99.3% at the ends of the ramp
        return b / (1.0 + math.exp(-k * (step - cfg.kl_warmup_steps / 2)))
    if s == "cyclical":
        period = max(total_steps, 1) / cfg.kl_cycles
        position = (step % period) / period
        return b * min(1.0, position / cfg.kl_ratio) if cfg.kl_ratio > 0 else b
    raise ConfigError(f"unknown kl_schedule {s!r}")


def learning_rate(cfg: TrainConfig) -> float:
    """The Adam learning rate for cfg.batch_size (the global batch in multi-process runs).

    With lr_batch set, lr is the rate tuned at that batch size and other sizes follow the
    square-root rule (Malladi et al. 2022; Granziol et al. 2022): the noise of an Adam step
    falls as 1/sqrt(batch), so the step can grow by sqrt(batch / lr_batch). The shipped
    default, lr 2e-3 at batch 128, is what the CPU figures in README.md were trained with;
    docs/performance.md has the batch-512 check of the rule.
    """
    if cfg.lr_batch <= 0:
        return cfg.lr
    return cfg.lr * math.sqrt(cfg.batch_size / cfg.lr_batch)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: int  # completed epochs
    seconds: float
    valid: dict[str, float] = field(default_factory=dict)  # last validation
    best_valid: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


StepCallback = Callable[[dict[str, Any]], None]


def draw_noise(batch: int, cfg: Config, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The randomness of one training step for a whole (global) batch: eps for z and the
    word-dropout mask. Drawn in one place so that every process of a multi-process run
    draws the same numbers and keeps its own slice."""
    eps = torch.randn(batch, cfg.model.latent_dim, device=device)
    wd = cfg.train.word_dropout
    drop = torch.rand(batch, FORM.seq_len, device=device) < wd if wd > 0 else None
    return eps, drop


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens: Tensor,
    beta: float,
    cfg: Config,
    noise: tuple[Tensor, Tensor | None],
    use_amp: bool = False,
    ctx: Dist = Dist(),
) -> dict[str, Tensor]:
    """One optimizer step on `tokens` (this process's share of the batch). `model` may be
    wrapped in DistributedDataParallel. Returns the loss terms (detached)."""
    raw = model.module if isinstance(model, DDP) else model
    eps, drop = noise
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(tokens, cfg.train.word_dropout, eps=eps, drop=drop)
    batch_mean = functools.partial(global_mean, ctx=ctx, differentiable=True) if ctx.active else None
    terms = raw.loss(tokens, out, beta, cfg.train.free_bits, batch_mean)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.train.grad_clip)
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


def train(
    cfg: Config, data: PreparedData, run_dir: str | Path, resume: bool = False, on_log: StepCallback | None = None
) -> TrainResult:
    """Fit the VAE; write config, vocabulary, checkpoints and log.jsonl into run_dir.

    resume=True continues from run_dir/last.safetensors (same optimizer moments, schedule
    position, RNG state). Ctrl-C (KeyboardInterrupt) writes a resume point and returns
    with `interrupted=True`. `on_log` receives every log record (steps and epochs).
    Launched by torchrun, each process trains on its slice of every batch (see
    poetvae.distributed); only rank 0 writes anything.
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    ctx, device = setup(resolve_device(tc.device))
    if device.type == "cpu":
        keep_freed_memory()
    if data.embeddings.size(1) != cfg.model.embed_dim:
        raise ConfigError(
            f"the prepared embeddings have {data.embeddings.size(1)} dims but embed_dim is "
            f"{cfg.model.embed_dim}; prepare again with --embed-dim {cfg.model.embed_dim}"
        )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=len(data.vocab)))
    if not data.splits["train"]:
        raise ConfigError("the training split is empty")

    torch.manual_seed(tc.seed)
    raw = PoetVAE(cfg.model)
    with torch.no_grad():
        raw.embedding.weight.copy_(data.embeddings)
        raw.token_chars.copy_(data.vocab.token_chars())
    raw.embedding.weight.requires_grad_(not tc.freeze_embeddings)
    raw.to(device)
    optimizer = torch.optim.AdamW(
        [p for p in raw.parameters() if p.requires_grad], lr=learning_rate(tc), weight_decay=tc.weight_decay
    )

    train_tokens = data.tokens("train").to(device)
    valid_tokens = data.tokens("valid").to(device)
    n = train_tokens.size(0)
    batch = min(tc.batch_size, n)
    if batch % ctx.world:
        raise ConfigError(f"batch_size {batch} does not split evenly over {ctx.world} processes")
    steps_per_epoch = n // batch  # drop the ragged last batch: every step sees the same shape
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps:
        total_steps = min(total_steps, tc.max_steps)

    step, elapsed, best = 0, 0.0, math.inf
    if resume:
        tensors, meta = ckpt.load_tensors(run_dir / rundir.LAST)
        ckpt.restore_train_state(raw, optimizer, tensors, meta)
        step, elapsed, best = meta["step"], meta["elapsed"], meta["best"]
    elif ctx.is_main:
        rundir.RunDir(run_dir).create(cfg, data.vocab)
    model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None) if ctx.active else raw

    def log(record: dict[str, Any]) -> None:
        if ctx.is_main:
            ckpt.append_log(run_dir, record)
            if on_log is not None:
                on_log(record)

    def save_resume_point() -> None:
        if ctx.is_main:
            tensors, opt_meta = ckpt.flatten_train_state(raw, optimizer)
            ckpt.save_tensors(
                run_dir / rundir.LAST, tensors, {"step": step, "elapsed": elapsed, "best": best, "optimizer": opt_meta}
            )

    use_amp = tc.amp and device.type == "cuda"
    result = TrainResult(run_dir, step, step // steps_per_epoch, elapsed)
    model.train()
    started = time.perf_counter() - elapsed
    sums = torch.zeros(3, device=device)  # rec, kl, loss since the last log line
    since_log = 0
    share = slice(ctx.rank * (batch // ctx.world), (ctx.rank + 1) * (batch // ctx.world))
    try:
        while step < total_steps:
            epoch, first = divmod(step, steps_per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch)).to(device)
            for i in range(first, steps_per_epoch):
                tokens = train_tokens[order[i * batch : (i + 1) * batch][share]]  # this process's share
                eps, drop = draw_noise(batch, cfg, device)  # for the whole batch: every process draws the same
                beta = kl_weight(step, total_steps, tc)
                terms = train_step(
                    model,
                    optimizer,
                    tokens,
                    beta,
                    cfg,
                    (eps[share], drop[share] if drop is not None else None),
                    use_amp,
                    ctx,
                )
                step += 1
                sums += torch.stack([terms["rec"].mean(), terms["kl"].mean(), terms["loss"]])
                since_log += 1
                if step % tc.log_every == 0 or step == total_steps:
                    rec, kl, loss = (global_mean(sums, ctx) / since_log).tolist()
                    elapsed = time.perf_counter() - started
                    log(
                        {
                            "kind": "step",
                            "step": step,
                            "total_steps": total_steps,
                            "epoch": epoch,
                            "rec": rec,
                            "kl": kl,
                            "loss": loss,
                            "beta": beta,
                            "seconds": elapsed,
                        }
                    )
                    sums.zero_()
                    since_log = 0
                out_of_time = tc.max_minutes > 0 and time.perf_counter() - started >= tc.max_minutes * 60
                if step >= total_steps or out_of_time:
                    break
            elapsed = time.perf_counter() - started
            valid = {}
            if valid_tokens.size(0) and ctx.is_main:
                # Validation draws its own z: on a forked, fixed RNG, so that it neither
                # shifts the training noise nor differs between ranks (which skip it).
                valid = elbo_terms(raw, valid_tokens, seed=tc.seed)
            score = valid.get("nelbo", -step)  # with no validation split, the newest is the best
            if score < best:
                best = score
                result.best_valid = valid
                if ctx.is_main:
                    ckpt.save_tensors(run_dir / rundir.BEST, raw.state_dict(), {"step": step, "valid": valid})
            save_resume_point()
            result.valid = valid
            log(
                {
                    "kind": "epoch",
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 3),
                    "seconds": elapsed,
                    **{f"valid_{k}": v for k, v in valid.items()},
                }
            )
            if tc.max_minutes > 0 and elapsed >= tc.max_minutes * 60:
                break
    except KeyboardInterrupt:
        elapsed = time.perf_counter() - started
        save_resume_point()
        if ctx.is_main and not (run_dir / rundir.BEST).exists():
            ckpt.save_tensors(run_dir / rundir.BEST, raw.state_dict(), {"step": step, "valid": {}})
        result.interrupted = True
    finally:
        teardown()
    result.steps, result.epochs, result.seconds = step, step // steps_per_epoch, elapsed
    if not result.best_valid and (run_dir / rundir.BEST).exists():
        result.best_valid = ckpt.load_tensors(run_dir / rundir.BEST)[1].get("valid", {})
    return result
