"""A prior fitted to the aggregate posterior: z where the decoder has seen it.

The decoder is trained on z ~ q(z|x) of training poems, and `sample` feeds it z ~ N(0, I).
When the KL term is large, the aggregate posterior q(z) = 1/N sum_i q(z|x_i) does not fill
N(0, I): prior samples then fall into "holes" that no poem's posterior covers and the
decoder never saw (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models"). Ghosh et al.
2020 ("From Variational to Deterministic Autoencoders") sample instead from a density
fitted to the codes after training. FittedPrior is the simplest one: a single
full-covariance Gaussian with the exact first two moments of q(z),

    mean = 1/N sum_i mu_i
    cov  = 1/N sum_i (mu_i - mean)(mu_i - mean)^T  +  1/N sum_i diag(sigma_i^2)

stored as mean and the Cholesky factor L of cov (z = mean + L eps, eps ~ N(0, I)).

    prior = fit_prior(poet, poems)              # or fit_prior(model, token_rows)
    z = prior.sample(10, generator)              # (10, Z)
    prior.save(path); FittedPrior.load(path)     # safetensors: mean, scale_tril + JSON metadata
    fit_run_prior("runs/ts")                     # a run's own, written to RUN/prior.safetensors

`poetvae train` writes RUN/prior.safetensors at the end of training, `poetvae fit-prior`
(re)writes it, and `poetvae sample --prior fitted` (Poet.sample(..., prior="fitted"))
draws from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.errors import CheckpointError, ConfigError, CorpusError
from poetvae.hardware import resolve_device
from poetvae.model import PoetVAE
from poetvae.rundir import RunDir

if TYPE_CHECKING:  # poet imports this module; this one needs Poet only as a type
    from poetvae.poet import PoemLike, Poet

MAX_POEMS = 20_000  # training poems a run's prior is fitted on: plenty for Z(Z+3)/2 moments


def seeded_rows(n: int, limit: int, seed: int) -> Tensor:
    """The indices of at most `limit` of `n` rows, chosen with `seed`, in ascending order: a
    fixed subset of a training split, the same on every call (a refitted prior, a figure
    comparable between runs on the same corpus)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


@dataclass(frozen=True)
class FittedPrior:
    """A Gaussian N(mean, L L^T) over z, fitted to the posteriors of a set of poems."""

    mean: Tensor  # (Z,)
    scale_tril: Tensor  # (Z, Z) lower-triangular L with a positive diagonal: covariance = L L^T
    poems: int  # how many posteriors it was fitted to
    weights_sha256: str | None = None  # of the weights file whose encoder gave them, when known

    @property
    def latent_dim(self) -> int:
        return self.mean.numel()

    @property
    def covariance(self) -> Tensor:
        return self.scale_tril @ self.scale_tril.T

    def to(self, device: torch.device | str) -> FittedPrior:
        return dataclasses.replace(self, mean=self.mean.to(device), scale_tril=self.scale_tril.to(device))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n latent codes z = mean + L eps, eps ~ N(0, I): (n, Z) on the prior's device
        (where `generator` must be too)."""
        eps = torch.randn(n, self.latent_dim, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + eps @ self.scale_tril.T

    def summary(self) -> dict[str, float]:
        """A few numbers to compare with N(0, I), whose mean norm is 0 and std 1 per dim."""
        std = self.covariance.diagonal().sqrt()
        return {
            "mean_norm": float(self.mean.norm()),
            "std_mean": float(std.mean()),
            "std_min": float(std.min()),
            "std_max": float(std.max()),
        }

    def save(self, path: str | Path) -> None:
        """One safetensors file (atomic write): tensors `mean`, `scale_tril`; metadata
        `poems`, `latent_dim`, `weights_sha256`."""
        meta = {"poems": self.poems, "latent_dim": self.latent_dim, "weights_sha256": self.weights_sha256}
        save_tensors(Path(path), {"mean": self.mean, "scale_tril": self.scale_tril}, meta)

    @classmethod
    def load(cls, path: str | Path) -> FittedPrior:
        """What save wrote, checked; CheckpointError naming the file otherwise. No pickle."""
        tensors, meta = load_tensors(Path(path))
        mean, tril = tensors.get("mean"), tensors.get("scale_tril")
        poems, sha = meta.get("poems"), meta.get("weights_sha256")
        problem = (
            "no mean and scale_tril tensors"
            if mean is None or tril is None
            else "mean must be (Z,) and scale_tril (Z, Z), floating point"
            if mean.dim() != 1 or tril.shape != (mean.numel(), mean.numel()) or not mean.is_floating_point()
            else "latent_dim does not match the tensors"
            if meta.get("latent_dim") != mean.numel()
            else "its numbers are not finite"
            if not (mean.isfinite().all() and tril.isfinite().all())
            else "scale_tril is not lower-triangular with a positive diagonal"
            if not (torch.equal(tril, tril.tril()) and (tril.diagonal() > 0).all())
            else "poems must be a whole number > 0"
            if not (isinstance(poems, int) and not isinstance(poems, bool) and poems > 0)
            else None
        )
        if problem:
            raise CheckpointError(f"{path} is not a fitted prior ({problem})")
        return cls(mean.float(), tril.float(), poems, sha if isinstance(sha, str) else None)


@torch.no_grad()
def fit_prior(model: PoetVAE | Poet, poems: Tensor | Sequence[PoemLike], batch_size: int = 1024) -> FittedPrior:
    """The Gaussian with the first two moments of the aggregate posterior of `poems`.

    model: a PoetVAE with `poems` as (N, FORM.seq_len) token rows, or a Poet, which also
    takes poems as text (characters it does not know are read as <unk>). The posteriors
    are computed in eval mode, `batch_size` poems at a time, and the moments in float64.
    """
    if not isinstance(model, PoetVAE):  # a Poet: it knows the vocabulary
        if not isinstance(poems, Tensor):
            poems = model.tokens(poems, allow_unk=True)
        model = model.model
    elif not isinstance(poems, Tensor):
        raise TypeError("fit_prior(model, poems) takes token rows; pass a Poet to fit poems given as text")
    if model.encoder is None:
        raise ConfigError("a model without a latent (--no-latent) has no posterior to fit a prior to")
    n = poems.size(0)
    if n == 0:
        raise CorpusError("no poems to fit a prior to")
    device = next(model.parameters()).device
    means, variances = [], []
    was_training = model.training
    model.eval()  # no dropout: the posteriors the model gives at test time
    try:
        for i in range(0, n, batch_size):
            mu, logvar = model.encode(poems[i : i + batch_size].to(device))
            means.append(mu.double().cpu())
            variances.append(logvar.double().exp().cpu())
    finally:
        model.train(was_training)
    mu, var = torch.cat(means), torch.cat(variances)
    if not (mu.isfinite().all() and var.isfinite().all()):
        raise CheckpointError("the encoder gives posteriors that are not finite (broken weights): no prior to fit")
    mean = mu.mean(dim=0)
    centred = mu - mean
    # 1/N, not 1/(N-1): these are the moments of the mixture q(z) itself, not estimates
    covariance = centred.T @ centred / n + torch.diag(var.mean(dim=0))
    return FittedPrior(mean.float(), _cholesky(covariance).float(), n)


def _cholesky(covariance: Tensor) -> Tensor:
    """L with L L^T = covariance. The covariance is positive definite in exact arithmetic
    (its sigma^2 term is), but posterior variances that underflow to ~0 in dims where the
    means are collinear leave it singular in floating point; then a jitter, growing from
    1e-10 of the mean variance, is added to the diagonal until the factorisation succeeds."""
    eye = torch.eye(covariance.size(0), dtype=covariance.dtype)
    scale = float(covariance.diagonal().mean().clamp_min(1e-30))
    jitter = 0.0
    for exponent in range(-10, 0):
        factor, info = torch.linalg.cholesky_ex(covariance + jitter * eye)
        if info.item() == 0:
            return factor
        jitter = scale * 10.0**exponent
    raise CheckpointError("the posterior covariance is not positive definite, even with jitter: no prior to fit")


def fit_run_prior(
    run_dir: str | Path,
    *,
    device: str = "auto",
    max_poems: int = MAX_POEMS,
    seed: int | None = None,
    train_tokens: Tensor | None = None,
) -> FittedPrior:
    """Fit a run's prior and write it to RUN/prior.safetensors (returned as well).

    The encoder is that of the run's best weights (model.safetensors, what `sample`
    loads); the poems are at most `max_poems` of its training split, chosen with `seed`
    (default: the run's train.seed, so a refit gives the prior training wrote). The split
    is read from RUN/prep unless `train_tokens` holds its token rows (training passes
    them: a run trained through the library need not hold its prep/). ConfigError for a
    run trained without a latent."""
    run = RunDir(run_dir)
    # config, vocabulary and best weights, checked to fit one another and to be finite
    # (what fine-tuning from a run needs too)
    best = run.open_for_init()
    if not best.config.model.use_latent:
        raise ConfigError(f"{run_dir} was trained without a latent (--no-latent): it has no prior to fit")
    if train_tokens is None:
        train_tokens = best.vocab.encode_batch([p.lines for p in run.train_poems()])
    seed = best.config.train.seed if seed is None else seed
    tokens = train_tokens[seeded_rows(train_tokens.size(0), max_poems, seed).to(train_tokens.device)]
    with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave the caller's RNG alone
        model = PoetVAE(best.config.model)
    model.load_state_dict(best.weights)
    prior = dataclasses.replace(fit_prior(model.to(resolve_device(device)), tokens), weights_sha256=best.sha256)
    prior.save(run.prior)
    return prior
