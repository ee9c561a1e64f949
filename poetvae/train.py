"""`poetvae train`: one explicit training loop, no framework.

    result = train(load_config(), prepared_data, "runs/quatrains")

Batches are dense (N, 21) id tensors that live on the device for the whole run (every
quatrain has the same length, and the whole corpus fits), indexed by a per-epoch
permutation: no DataLoader, no padding logic, no per-poem Python work per step.

Determinism: `train.seed` fixes initialisation; the batch order of epoch e comes from a
generator seeded by (seed, e) alone, so a resumed run can skip to the middle of an epoch;
all other noise (dropout, word dropout, z ~ q) draws from torch's global RNG, whose state
is saved in every resume point.

The loop reads as its steps: `_set_up` (device and process group, the model from the
prepared embeddings or from the weights of the run it fine-tunes, the optimizer, the
resume point), then per epoch `_train_epoch` and
`_validate_and_checkpoint`, and `_interrupt` on Ctrl-C.

Reliability: Ctrl-C only asks the loop to stop; it stops at the next step boundary and
writes its resume point there, so a resumed run redoes nothing and matches the
uninterrupted one exactly. A non-finite loss (checked at every log step, and with the
weights before every save: no extra host sync per step) raises TrainingDiverged before
anything non-finite reaches the disk. A `TrainState` (step, elapsed
time, best score, ...) is what they hand on; a `TrainSetup` what they share. The log
records are poetvae.records's. `elbo_terms` is the validation pass (`poetvae evaluate`
reports it too): training needs the model alone, and importing this module loads no
decoding, controls, prosody or Poet code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from poetvae import checkpoint as ckpt
from poetvae import prior, rundir
from poetvae.config import Config, TrainConfig
from poetvae.distributed import Dist, any_process, global_mean, setup, teardown
from poetvae.errors import ConfigError, TrainingDiverged
from poetvae.form import FORM
from poetvae.hardware import autocast_choice, keep_freed_memory, resolve_device
from poetvae.model import PoetVAE
from poetvae.prep import PreparedData
from poetvae.records import ElboTerms, EpochRecord, LogRecord, StepRecord, append_log, perplexity, truncate_log


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


def global_batch(train_cfg: TrainConfig, n_train: int, world: int = 1) -> int:
    """The batch every step takes: batch_size, or the whole training split when that is
    smaller. ConfigError unless it splits evenly over `world` processes."""
    batch_size = min(train_cfg.batch_size, n_train)
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {world} processes")
    return batch_size


@dataclass
class TrainResult:
    """What `train` returns: how far the run went and its validation terms."""

    run_dir: Path
    steps: int
    epochs: int  # completed epochs
    seconds: float
    valid: ElboTerms | None = None  # the last validation (None: no validation split, or none yet)
    best_valid: ElboTerms | None = None
    interrupted: bool = False


LogCallback = Callable[[LogRecord], None]


# ---- the validation pass ----------------------------------------------------------------
@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() for the duration (no dropout), then back to the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def elbo_terms(model: PoetVAE, tokens: Tensor, *, batch_size: int = 1024, seed: int | None = None) -> ElboTerms | None:
    """Mean per-poem reconstruction, KL and negative ELBO (beta = 1, no free bits, z sampled
    once from q(z|x)), and perplexity per token position (20 characters + <eos> = 21 per
    poem whatever the tokenizer, so char and word models compare). None for no tokens.

    z comes from torch's global RNG; with `seed`, from a forked copy seeded with it, so that
    the result is fixed by the seed and the caller's random state is left as it was."""
    if seed is not None:
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return elbo_terms(model, tokens, batch_size=batch_size)
    rec_sum = kl_sum = 0.0
    n = tokens.size(0)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            batch = tokens[i : i + batch_size]
            terms = model.loss(batch, model(batch))
            rec_sum += terms["rec"].sum().item()
            kl_sum += terms["kl"].sum().item()
    if n == 0:
        return None
    rec, kl = rec_sum / n, kl_sum / n
    return ElboTerms(rec=rec, kl=kl, nelbo=rec + kl, ppl=perplexity(rec + kl), poems=n)


# ---- one optimizer step -----------------------------------------------------------------
class StepNoise(NamedTuple):
    """The randomness of one training step: eps for z = mu + sigma * eps (B, Z), and the
    masks (B, T) of word dropout on the decoder's inputs and of token dropout on the
    encoder's (None where the setting is 0)."""

    eps: Tensor
    drop: Tensor | None
    encoder_drop: Tensor | None

    def rows(self, share: slice | Tensor) -> StepNoise:
        """This process's slice of the global batch's noise."""
        return StepNoise(*(t[share] if t is not None else None for t in self))


def draw_noise(batch: int, cfg: Config, device: torch.device) -> StepNoise:
    """The randomness of one training step for a whole (global) batch. Drawn in one place
    so that every process of a multi-process run draws the same numbers and keeps its own
    slice; a mask whose setting is 0 draws nothing, so adding encoder noise to the
    settings changes no other run's random stream."""

    def mask(share: float) -> Tensor | None:
        return torch.rand(batch, FORM.seq_len, device=device) < share if share > 0 else None

    eps = torch.randn(batch, cfg.model.latent_dim, device=device)  # drawn in this order: eps, then the masks
    return StepNoise(eps, mask(cfg.train.word_dropout), mask(cfg.train.encoder_word_dropout))


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens: Tensor,
    noise: StepNoise,
    cfg: Config,
    *,
    beta: float,
    use_amp: bool = False,
    process: Dist = Dist(),
) -> dict[str, Tensor]:
    """One optimizer step on `tokens` (this process's share of the batch) with `noise`
    (draw_noise's, sliced the same way) at KL weight `beta`. `model` may be wrapped in
    DistributedDataParallel. Returns the loss terms (detached)."""
    raw_model = model.module if isinstance(model, DDP) else model
    batch_mean = functools.partial(global_mean, process=process, differentiable=True) if process.active else None
    # the output layer runs in the loss (Decoder.nll), so under autocast too; its softmaxes,
    # the KL and every sum are in fp32 whatever the autocast dtype
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(tokens, eps=noise.eps, drop=noise.drop, encoder_drop=noise.encoder_drop)
        terms = raw_model.loss(tokens, out, beta, cfg.train.free_bits, batch_mean)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


# ---- the training loop ------------------------------------------------------------------
@dataclass
class TrainSetup:
    """What a training session works with; fixed once set up."""

    cfg: Config  # with model.vocab_size set from the data
    run_dir: Path
    process: Dist  # this process's rank among `world` (rank 0 of 1 when alone)
    device: torch.device
    raw_model: PoetVAE
    model: torch.nn.Module  # what the step calls: raw_model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    train_tokens: Tensor  # (N, FORM.seq_len) on the device for the whole run
    valid_tokens: Tensor
    batch_size: int  # the global batch
    steps_per_epoch: int
    total_steps: int
    share: slice  # this process's rows of every global batch
    use_amp: bool
    on_log: LogCallback | None
    staging: rundir.Staging | None  # a new run not yet published: run_dir is its staging directory
    stop: StopRequest  # Ctrl-C


@dataclass
class TrainState:
    """Where the run stands. step, elapsed and best are what a resume point saves beside the
    weights, the optimizer moments and the RNG state."""

    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # seconds of training, over every session of the run
    best: float = math.inf  # lowest selection_score so far (-step without a validation split)
    clock_start: float = 0.0  # time.perf_counter() at which `elapsed` would have been 0
    loss_sums: Tensor | None = None  # rec, kl, loss summed since the last step record
    steps_since_log: int = 0
    valid: ElboTerms | None = None  # the last validation
    best_valid: ElboTerms | None = None
    interrupted: bool = False
    saved_step: int | None = None  # the step of the resume point on disk (None: none yet)

    def clock(self) -> float:
        """Seconds of training so far (this session plus the sessions before a resume)."""
        return time.perf_counter() - self.clock_start


class StopRequest:
    """Ctrl-C during training: SIGINT only records the request (in the main thread, where
    signals arrive; the previous handler is back on exit), and the loop stops at the next
    step boundary. A second Ctrl-C while the resume point is written is the same request."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    cfg: Config,
    data: PreparedData,
    run_dir: str | Path,
    resume: bool = False,
    on_log: LogCallback | None = None,
    *,
    staging: rundir.Staging | None = None,
    init: rundir.InitRun | None = None,
) -> TrainResult:
    """Fit the VAE; write config, vocabulary, checkpoints and log.jsonl into run_dir.

    resume=True continues from run_dir/last.safetensors (same optimizer moments, schedule
    position, RNG state). Ctrl-C stops at the next step boundary, writes a resume point
    there and returns with `interrupted=True` (so does a KeyboardInterrupt raised by
    `on_log`). `on_log` receives every log record (steps and epochs). A non-finite loss
    raises TrainingDiverged; the resume point and best weights on disk stay the last
    finite ones. With `staging` (a new run; see rundir.Staging) the run is written there
    and published as run_dir at its first resume point. Launched by torchrun, each
    process trains on its slice of every batch (see poetvae.distributed); only rank 0
    writes anything. A run that ends (not interrupted) with a latent gets its fitted prior,
    RUN/prior.safetensors (poetvae.prior.fit_run_prior, on the best weights).

    With `init` (a new run that fine-tunes another: rundir.RunDir.open_for_init), the model
    starts from its best weights instead of a fresh initialisation; `data` must be prepared
    with its vocabulary and `cfg.model` must be its model. config.json records where the
    run started (rundir.InitRun.record). A resumed fine-tuning run needs no `init`: its
    resume point holds everything.
    """
    with StopRequest() as stop:
        run, state = _set_up(
            cfg, data, Path(run_dir), resume=resume, on_log=on_log, staging=staging, init=init, stop=stop
        )
        try:
            while state.step < run.total_steps:
                if not _train_epoch(run, state):  # Ctrl-C: stopped at a step boundary
                    _interrupt(run, state)
                    break
                _validate_and_checkpoint(run, state)
                if _stop_requested(run):  # Ctrl-C during validation or the save
                    _interrupt(run, state)
                    break
                if _out_of_time(run, state.elapsed):
                    break
        except KeyboardInterrupt:
            _interrupt(run, state)
        finally:
            teardown()
    if run.process.is_main and not state.interrupted and run.cfg.model.use_latent:
        # The fitted prior of the final best weights (a few seconds); an interrupted run
        # gets it when it is resumed to its end, and `poetvae fit-prior` can always refit.
        prior.fit_run_prior(run.run_dir, device=str(run.device), train_tokens=run.train_tokens)
    return _result(run, state)


def _set_up(
    cfg: Config,
    data: PreparedData,
    run_dir: Path,
    *,
    resume: bool,
    on_log: LogCallback | None,
    staging: rundir.Staging | None,
    init: rundir.InitRun | None,
    stop: StopRequest,
) -> tuple[TrainSetup, TrainState]:
    """Device and process group, the model from the prepared embeddings, the optimizer, the
    batch geometry, and the state: fresh (writing the run's header) or from the resume point."""
    train_cfg = cfg.train
    process, device = setup(resolve_device(train_cfg.device))
    if device.type == "cpu":
        keep_freed_memory()
    if data.embeddings.size(1) != cfg.model.embed_dim:
        raise ConfigError(
            f"the prepared embeddings have {data.embeddings.size(1)} dims but embed_dim is "
            f"{cfg.model.embed_dim}; prepare again with --embed-dim {cfg.model.embed_dim}"
        )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=len(data.vocab)))
    if data.prep_config is not None:  # the settings the data was really prepared with
        cfg = dataclasses.replace(cfg, prep=data.prep_config)
    if not data.splits["train"]:
        raise ConfigError("the training split is empty")
    if init is not None:
        _check_init(cfg, data, init, resume=resume)

    raw_model = _model_from_embeddings(cfg, data, device)
    if init is not None:
        # init_reset "decoder" keeps the fresh decoder drawn from train.seed: the encoder of an
        # autoencoder (beta = 0) run has learned to write the poem into z, and a decoder that
        # starts without a language model of its own has to learn to read it (Li et al. 2019).
        # Weights whose shape the new settings changed (rundir.REFIT_SETTINGS: the encoder's
        # size, the skip connection from z, a wider z) keep their fresh draw, but for the
        # decoder's weights that read z (_widened).
        state = raw_model.state_dict()
        for k, v in init.weights.items():
            if k in state and not (train_cfg.init_reset == "decoder" and _in_decoder(k)):
                fitted = v if state[k].shape == v.shape else _widened(k, state[k], v)
                if fitted is not None:
                    state[k] = fitted
        with torch.no_grad():
            raw_model.load_state_dict(state)
    optimizer = torch.optim.AdamW(
        [p for p in raw_model.parameters() if p.requires_grad],
        lr=learning_rate(train_cfg),
        weight_decay=train_cfg.weight_decay,
    )

    train_tokens = data.tokens("train").to(device)
    valid_tokens = data.tokens("valid").to(device)
    n = train_tokens.size(0)
    batch_size = global_batch(train_cfg, n, process.world)
    if cfg.model.bn_gamma > 0 and batch_size // process.world < 2:  # batch norm of one row: no variance
        raise ConfigError("bn_gamma (BN-VAE) normalises mu over the batch: it needs batches of 2 poems or more")
    steps_per_epoch = n // batch_size  # drop the ragged last batch: every step sees the same shape
    total_steps = train_cfg.epochs * steps_per_epoch
    if train_cfg.max_steps:
        total_steps = min(total_steps, train_cfg.max_steps)

    state = TrainState()
    if resume:
        if staging is not None:
            raise ValueError("a resumed run is not staged")
        tensors, meta = ckpt.load_resume_point(run_dir / rundir.LAST)
        ckpt.restore_train_state(raw_model, optimizer, tensors, meta, source=run_dir / rundir.LAST)
        state.step, state.elapsed, state.best = meta["step"], meta["elapsed"], meta["best"]
        state.saved_step = state.step
        if process.is_main:
            truncate_log(run_dir, state.step)  # what a killed session logged past its resume point
    elif process.is_main:
        if staging is not None:
            run_dir = staging.path
        rundir.RunDir(run_dir).create(cfg, data.vocab, init_from=init)
    model = raw_model
    if process.active:
        model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None)

    per_process = batch_size // process.world
    run = TrainSetup(
        cfg=cfg,
        run_dir=run_dir,
        process=process,
        device=device,
        raw_model=raw_model,
        model=model,
        optimizer=optimizer,
        train_tokens=train_tokens,
        valid_tokens=valid_tokens,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        share=slice(process.rank * per_process, (process.rank + 1) * per_process),
        use_amp=autocast_choice(device, train_cfg.amp)[0],
        on_log=on_log,
        staging=staging if process.is_main else None,
        stop=stop,
    )
    model.train()
    state.clock_start = time.perf_counter() - state.elapsed
    state.loss_sums = torch.zeros(3, device=device)
    return run, state


def _in_decoder(name: str) -> bool:
    """Whether a state-dict entry belongs to the decoder proper (its LSTM, initial state and
    output layer); the embeddings are shared with the encoder and are kept."""
    return name.startswith("decoder.")


# The decoder's weights whose last dimension grows with latent_dim: its LSTM reads
# [token ; z], its initial state is a function of z.
READS_Z = ("decoder.lstm.weight_ih_l0", "decoder.init_state.weight")


def _widened(name: str, fresh: Tensor, old: Tensor) -> Tensor | None:
    """An init run's weight that reads z, for a wider z: its columns kept, the new ones
    zero, so that the new dims start unread and the decoder starts as the init run's (the
    latent model widens the poet's z this way). None for any other weight that changed."""
    if name not in READS_Z or fresh.shape[:-1] != old.shape[:-1] or fresh.shape[-1] < old.shape[-1]:
        return None
    out = torch.zeros_like(fresh)
    out[..., : old.shape[-1]] = old
    return out


def _check_init(cfg: Config, data: PreparedData, init: rundir.InitRun, *, resume: bool) -> None:
    """A new run that starts from `init` must have its vocabulary and its model."""
    if resume:
        raise ValueError("a resumed run continues from its resume point, not from an init run")
    if data.vocab.tokens != init.vocab.tokens:
        raise ConfigError(f"the prepared corpus has its own vocabulary, not that of {init.path}: prepare it with that")
    differ = [
        f"{k} {getattr(cfg.model, k)!r} (it has {v!r})"
        for k, v in dataclasses.asdict(init.config.model).items()
        if getattr(cfg.model, k) != v and k not in rundir.REFIT_SETTINGS
    ]
    new_z, old_z = cfg.model.latent_dim, init.config.model.latent_dim
    if new_z < old_z:
        differ.append(f"latent_dim {new_z} (it has {old_z}: z may widen, not narrow)")
    if differ:
        raise ConfigError(f"the model settings differ from those of {init.path}: {', '.join(differ)}")


def _model_from_embeddings(cfg: Config, data: PreparedData, device: torch.device) -> PoetVAE:
    """A fresh model (initialised from train.seed) whose embedding table is the prepared
    word2vec matrix, frozen when freeze_embeddings is set."""
    torch.manual_seed(cfg.train.seed)
    model = PoetVAE(cfg.model)
    with torch.no_grad():
        model.embedding.weight.copy_(data.embeddings)
        model.use_vocab(data.vocab)
    model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    return model.to(device)


def _train_epoch(run: TrainSetup, state: TrainState) -> bool:
    """Steps from state.step to the end of its epoch, of the run or of the time budget,
    whichever comes first (True), or to a Ctrl-C (False). A Ctrl-C on the epoch's last step
    ends the epoch (True): its validation and best weights come before the stop, as in the
    run that is not interrupted."""
    train_cfg = run.cfg.train
    epoch, first = divmod(state.step, run.steps_per_epoch)
    # The batch order of an epoch depends on (seed, epoch) alone: a resumed run finds it again.
    epoch_rng = torch.Generator().manual_seed(train_cfg.seed * 100_003 + epoch)
    order = torch.randperm(run.train_tokens.size(0), generator=epoch_rng).to(run.device)
    for i in range(first, run.steps_per_epoch):
        batch_rows = order[i * run.batch_size : (i + 1) * run.batch_size]
        tokens = run.train_tokens[batch_rows[run.share]]  # this process's share
        noise = draw_noise(run.batch_size, run.cfg, run.device)  # for the whole batch: every process draws the same
        beta = kl_weight(state.step, run.total_steps, train_cfg)
        terms = train_step(
            run.model,
            run.optimizer,
            tokens,
            noise.rows(run.share),
            run.cfg,
            beta=beta,
            use_amp=run.use_amp,
            process=run.process,
        )
        state.step += 1
        state.loss_sums += torch.stack([terms["rec"].mean(), terms["kl"].mean(), terms["loss"]])
        state.steps_since_log += 1
        if state.step % train_cfg.log_every == 0 or state.step == run.total_steps:
            _log_step(run, state, epoch=epoch, beta=beta)
        last = i + 1 == run.steps_per_epoch or state.step >= run.total_steps
        if _stop_requested(run) and not last:  # on an epoch's last step: its validation comes first
            return False
        if state.step >= run.total_steps or _out_of_time(run, state.clock()):
            break
    return True


def _log_step(run: TrainSetup, state: TrainState, *, epoch: int, beta: float) -> None:
    """A step record of the mean terms since the last one (over every process)."""
    rec, kl, loss = (global_mean(state.loss_sums, run.process) / state.steps_since_log).tolist()
    if not all(map(math.isfinite, (rec, kl, loss))):
        _diverged(run, state, f"the loss is {loss}")
    state.elapsed = state.clock()
    _log(run, StepRecord(state.step, run.total_steps, epoch, rec, kl, loss, beta, state.elapsed))
    state.loss_sums.zero_()
    state.steps_since_log = 0


def selection_score(valid: ElboTerms, kl_max: float) -> float:
    """What the best weights minimise: the validation objective the run trains towards,
    rec + kl_max * KL. With kl_max = 1 that is the -ELBO; an autoencoder (kl_max = 0) is
    judged by its reconstruction alone, since its KL is free to grow and would otherwise
    make its first epoch look best. (With no validation split the newest weights are best.)"""
    return valid.rec + kl_max * valid.kl


def _validate_and_checkpoint(run: TrainSetup, state: TrainState) -> None:
    """At the end of an epoch: validate, keep the best weights, write the epoch record and
    a resume point (in this order: a resumed run drops records past its resume point)."""
    _check_finite(run, state)
    state.elapsed = state.clock()
    valid = None
    if run.valid_tokens.size(0) and run.process.is_main:
        # Validation draws its own z: on a forked, fixed RNG, so that it neither
        # shifts the training noise nor differs between ranks (which skip it).
        valid = elbo_terms(run.raw_model, run.valid_tokens, seed=run.cfg.train.seed)
    score = selection_score(valid, run.cfg.train.kl_max) if valid is not None else -state.step
    if score < state.best:
        state.best = score
        state.best_valid = valid
        if run.process.is_main:
            _save_best(run, state.step, valid)
    state.valid = valid
    _log(run, EpochRecord(state.step, round(state.step / run.steps_per_epoch, 3), state.elapsed, valid))
    _save_resume_point(run, state)


def _out_of_time(run: TrainSetup, seconds: float) -> bool:
    max_minutes = run.cfg.train.max_minutes
    return max_minutes > 0 and seconds >= max_minutes * 60


def _stop_requested(run: TrainSetup) -> bool:
    """Whether Ctrl-C was pressed, in any process: every process stops after the same step."""
    return any_process(run.stop.requested, run.process)


def _interrupt(run: TrainSetup, state: TrainState) -> None:
    """Ctrl-C: a resume point at the current step, and weights to sample from even when no
    epoch has finished yet."""
    if state.saved_step != state.step:
        _check_finite(run, state)
        state.elapsed = state.clock()
        _save_resume_point(run, state)
    if run.process.is_main and not (run.run_dir / rundir.BEST).exists():
        _save_best(run, state.step, None)
    state.interrupted = True


def _check_finite(run: TrainSetup, state: TrainState) -> None:
    """Before a save: TrainingDiverged unless the loss since the last log step and every
    weight are finite (the same answer on every process: their weights are the same)."""
    if not torch.isfinite(global_mean(state.loss_sums, run.process)).all().item():
        _diverged(run, state, "the loss is not finite")
    weights_finite = torch.stack([p.detach().isfinite().all() for p in run.raw_model.parameters()]).all()
    if not weights_finite.item():
        _diverged(run, state, "the weights are not finite")


def _diverged(run: TrainSetup, state: TrainState, what: str) -> None:
    if state.saved_step is None:
        kept = "nothing was saved"
    else:
        kept = f"{run.run_dir} keeps its last finite resume point (step {state.saved_step}) and best weights"
    raise TrainingDiverged(
        f"training diverged by step {state.step} ({what}); {kept}. Train again with a lower --lr or a --grad-clip"
    )


def _save_best(run: TrainSetup, step: int, valid: ElboTerms | None) -> None:
    meta = {"step": step, "valid": valid.to_dict() if valid is not None else {}}
    ckpt.save_tensors(run.run_dir / rundir.BEST, run.raw_model.state_dict(), meta)


def _save_resume_point(run: TrainSetup, state: TrainState) -> None:
    """last.safetensors at this step; a staged new run is published with its first one."""
    if run.process.is_main:
        tensors, optimizer_meta = ckpt.flatten_train_state(run.raw_model, run.optimizer)
        meta = {"step": state.step, "elapsed": state.elapsed, "best": state.best, "optimizer": optimizer_meta}
        ckpt.save_tensors(run.run_dir / rundir.LAST, tensors, meta)
        if run.staging is not None and not run.staging.published:
            run.staging.publish()
            run.run_dir = Path(run.staging.target.path)
    state.saved_step = state.step


def _log(run: TrainSetup, record: LogRecord) -> None:
    if run.process.is_main:
        append_log(run.run_dir, record)
        if run.on_log is not None:
            run.on_log(record)


def _result(run: TrainSetup, state: TrainState) -> TrainResult:
    best_valid = state.best_valid
    if best_valid is None and (run.run_dir / rundir.BEST).exists():
        best_valid = ElboTerms.from_dict(ckpt.load_tensors(run.run_dir / rundir.BEST)[1].get("valid", {}))
    return TrainResult(
        run.run_dir,
        steps=state.step,
        epochs=state.step // run.steps_per_epoch,
        seconds=state.elapsed,
        valid=state.valid,
        best_valid=best_valid,
        interrupted=state.interrupted,
    )
