"""The metrics of poetvae.evaluate, each against a known answer where one exists."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from poetvae import evaluate as ev
from poetvae.config import Config, ModelConfig
from poetvae.decode import DecodeOptions
from poetvae.errors import ConfigError
from poetvae.form import FORM
from poetvae.model import PoetVAE
from poetvae.poet import Poet
from poetvae.train import elbo_terms
from poetvae.vocab import BOS, EOS, PAD

JINGYESI = ("床前明月光", "疑是地上霜", "举头望明月", "低头思故乡")
DENGLOU = ("白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼")
JIANGXUE = ("千山鸟飞绝", "万径人踪灭", "孤舟蓑笠翁", "独钓寒江雪")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(trained_run):
    """These models are tiny: a second intra-op thread buys nothing, and on a busy 2-core
    machine its synchronisation made single calls up to 100x slower. Restored afterwards.
    The session's trained_run is requested first so that it is always trained with the
    default threads, whichever test file builds it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(n: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """n random well-formed rows: 20 real tokens, <eos> (no <pad> needed)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(4, vocab_size, (n, FORM.seq_len), generator=g)
    rows[:, -1] = EOS
    return rows


# ---- importance-weighted NLL ------------------------------------------------------------


@pytest.fixture(scope="module")
def one_dim_vae() -> PoetVAE:
    """A tiny untrained VAE with a 1-d latent whose decoder depends strongly on z, so that
    p(z|x) is much narrower than q(z|x) and the bound is visibly loose at K = 1."""
    torch.manual_seed(0)
    model = PoetVAE(
        ModelConfig(vocab_size=12, embed_dim=8, highway_layers=1, hidden_dim=8, latent_dim=1, dropout=0.0)
    ).eval()
    with torch.no_grad():
        model.decoder.init_state.weight.mul_(8)
        model.decoder.lstm.weight_ih_l0[:, -1].mul_(8)  # the z column of the input weights
    return model


def _exact_nll(model: PoetVAE, tokens: torch.Tensor, grid: int = 2001, bound: float = 8.0) -> torch.Tensor:
    """-log p(x) = -log ∫ p(x|z) N(z; 0, 1) dz by quadrature on a fine grid of the 1-d z,
    written independently of evaluate.py (its own cross-entropy), all poems in one batch."""
    n, v = tokens.size(0), model.cfg.vocab_size
    zs = torch.linspace(-bound, bound, grid)
    x = tokens.repeat_interleave(grid, dim=0)
    inputs = torch.cat([x.new_full((x.size(0), 1), BOS), x[:, :-1]], dim=1)
    with torch.no_grad():
        logits, _ = model.decode(zs.repeat(n)[:, None], inputs)
    ce = F.cross_entropy(logits.reshape(-1, v), x.reshape(-1), ignore_index=PAD, reduction="none")
    log_pxz = -ce.view(n, grid, -1).sum(-1).double()
    log_prior = -0.5 * zs.double() ** 2 - 0.5 * math.log(2 * math.pi)
    # Riemann sum in log space; the integrand is ~0 at ±8, so the end corrections vanish
    return -(torch.logsumexp(log_pxz + log_prior, dim=1) + math.log(2 * bound / (grid - 1)))


@pytest.fixture(scope="module")
def iw_case(one_dim_vae) -> dict[str, torch.Tensor]:
    """Four poems, their exact NLL, and IW estimates at K = 1, 10 and 1000 (fixed seeds).
    K = 1 and 10 are averaged over repeats of the same poems, in one batched call each."""
    model = one_dim_vae
    tokens = _rows(4, model.cfg.vocab_size)

    def mean_iw(k: int, repeats: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(k)
        return ev.iw_nll(model, tokens.repeat(repeats, 1), k=k, generator=g).view(repeats, -1).mean(0)

    return {
        "tokens": tokens,
        "exact": _exact_nll(model, tokens),
        "iw1": mean_iw(1, 400),
        "iw10": mean_iw(10, 100),
        "iw1000": mean_iw(1000, 1),
    }


def test_iw_nll_converges_to_the_exact_likelihood(iw_case):
    iw, exact = iw_case["iw1000"], iw_case["exact"]
    assert iw.shape == (4,) and iw.dtype == torch.float64
    assert (iw - exact).abs().max() < 0.06
    assert abs(float((iw - exact).mean())) < 0.03


def test_iw_nll_tightens_with_k_from_the_elbo(one_dim_vae, iw_case):
    """nelbo = E[iw_nll(K=1)] >= E[iw_nll(K=10)] >= iw_nll(K large) ~ exact. Tolerances
    are about 4 standard errors of the averages (measured: about 0.035 for iw1 - nelbo,
    0.01 for iw10)."""
    exact, iw1, iw10, iw1000 = (float(iw_case[key].mean()) for key in ("exact", "iw1", "iw10", "iw1000"))
    torch.manual_seed(3)
    nelbo = elbo_terms(one_dim_vae, iw_case["tokens"].repeat(400, 1)).nelbo
    assert iw1 == pytest.approx(nelbo, abs=0.15)  # K = 1 is the ELBO, in expectation
    assert iw1 > iw10 + 0.1  # the bound is visibly loose at K = 1 here (gap about 0.3)
    assert iw10 > exact - 0.04  # an upper bound in expectation
    assert iw1000 < iw10 + 0.04
    assert iw1000 == pytest.approx(exact, abs=0.03)


def test_iw_nll_is_deterministic_and_chunks_k(one_dim_vae):
    tokens = _rows(3, one_dim_vae.cfg.vocab_size)
    a = ev.iw_nll(one_dim_vae, tokens, k=7, generator=torch.Generator().manual_seed(5))
    b = ev.iw_nll(one_dim_vae, tokens, k=7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(ev.iw_nll(one_dim_vae, tokens, k=7), ev.iw_nll(one_dim_vae, tokens, k=7))
    # K larger than a batch: split into chunks of 3 decoder rows, still one value per poem
    c = ev.iw_nll(one_dim_vae, tokens, k=7, batch_size=3, generator=torch.Generator().manual_seed(5))
    assert c.shape == (3,) and torch.isfinite(c).all()
    with pytest.raises(ValueError):
        ev.iw_nll(one_dim_vae, tokens, k=0)


def test_iw_nll_of_the_no_latent_model_is_its_reconstruction():
    torch.manual_seed(0)
    model = PoetVAE(
        ModelConfig(
            vocab_size=20, embed_dim=8, highway_layers=1, hidden_dim=8, latent_dim=3, dropout=0.3, use_latent=False
        )
    )
    model.train()  # iw_nll must switch dropout off itself, and put the mode back
    tokens = _rows(10, 20)
    tokens[3, 15:] = PAD  # a shorter (word-vocabulary-like) row: padding is ignored
    tokens[3, 15] = EOS
    nll = ev.iw_nll(model, tokens, k=50)
    assert model.training
    with torch.no_grad():
        rec = model.eval().loss(tokens, model(tokens))["rec"]
    assert torch.equal(nll, rec.double())
    assert torch.allclose(ev.iw_nll(model, tokens, batch_size=3), nll, rtol=1e-6, atol=0)


# ---- active units and mutual information --------------------------------------------------


def test_active_units_counts_dims_that_vary_over_poems():
    g = torch.Generator().manual_seed(0)
    mu = torch.cat(
        [
            torch.randn(2000, 3, generator=g),  # variance 1: active
            torch.full((2000, 1), 2.5),  # constant: inactive
            0.05 * torch.randn(2000, 1, generator=g),
        ],
        dim=1,
    )  # variance 0.0025 < 0.01
    count, var = ev.active_units(mu)
    assert count == 3
    assert var.shape == (5,)
    assert torch.allclose(var[:3], torch.ones(3), atol=0.1)
    assert var[3] == 0 and var[4] < 0.01
    assert ev.active_units(mu, threshold=0.001)[0] == 4
    assert ev.active_units(mu[:1]) == (0, pytest.approx(torch.zeros(5)))


def _calc_mi_reference(mu: torch.Tensor, logvar: torch.Tensor, seed: int) -> float:
    """He et al. 2019's calc_mi, transcribed with its plain (B, B, Z) broadcast."""
    mu, logvar = mu.double(), logvar.double()
    n, nz = mu.shape
    neg_entropy = (-0.5 * nz * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)).mean()
    eps = torch.randn((n, nz), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (mu + torch.exp(0.5 * logvar) * eps)[:, None]  # (z_batch, 1, nz)
    dev = z - mu[None]
    log_density = (
        -0.5 * (dev**2 / logvar.exp()[None]).sum(-1) - 0.5 * (nz * math.log(2 * math.pi) + logvar.sum(-1))[None]
    )
    log_qz = torch.logsumexp(log_density, dim=1) - math.log(n)
    return float(neg_entropy - log_qz.mean())


def test_mutual_information_matches_he_et_al_and_is_chunk_invariant():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(600, 4, generator=g), torch.randn(600, 4, generator=g) - 1
    ours = ev.mutual_information(mu, logvar, torch.Generator().manual_seed(7))
    assert ours == pytest.approx(_calc_mi_reference(mu, logvar, 7), abs=1e-9)
    chunked = ev.mutual_information(mu, logvar, torch.Generator().manual_seed(7), chunk=37)
    assert chunked == pytest.approx(ours, abs=1e-9)
    assert ev.mutual_information(mu, logvar) == ev.mutual_information(mu, logvar)  # seeded by default


def test_mutual_information_bounds():
    n, z = 512, 5
    log_n = math.log(n)
    g = torch.Generator().manual_seed(1)
    # Sampling noise of the closed-form entropy term against one sample per poem:
    # 0.5 * (mean |eps|^2 - Z) has standard deviation sqrt(Z / 2N) = 0.07 here.
    tol = 0.35
    # identical posteriors: x says nothing about z
    same_mu = torch.randn(1, z, generator=g).expand(n, z)
    same_lv = torch.randn(1, z, generator=g).expand(n, z)
    assert abs(ev.mutual_information(same_mu, same_lv)) < tol
    # far apart and narrow: z identifies the poem, I = log N
    far = ev.mutual_information(10 * torch.randn(n, z, generator=g), torch.full((n, z), -8.0))
    assert far == pytest.approx(log_n, abs=tol)
    # in between, more spread means more information, and never beyond log N
    values = [ev.mutual_information(s * torch.randn(n, z, generator=g), torch.zeros(n, z)) for s in (0.1, 1.0, 3.0)]
    assert values == sorted(values)
    assert values[0] < 0.3 < values[1] < values[2] < log_n + tol
    for seed in range(5):
        h = torch.Generator().manual_seed(seed)
        mu, lv = 4 * torch.randn(n, z, generator=h), 3 * torch.randn(n, z, generator=h) - 3
        assert -tol < ev.mutual_information(mu, lv, h) <= log_n + tol


def test_mutual_information_of_no_latent_is_zero():
    zeros = torch.zeros(700, 32)
    assert ev.mutual_information(zeros, zeros) == 0.0
    assert ev.mutual_information(torch.zeros(1, 4), torch.zeros(1, 4)) == 0.0


# ---- reconstruction accuracy -------------------------------------------------------------


def test_reconstruction_accuracy_with_a_perfect_and_an_imperfect_decoder(monkeypatch, trained_run):
    poet = Poet.load(trained_run, device="cpu")
    tokens = poet.tokens([JINGYESI, DENGLOU, JIANGXUE], allow_unk=True)
    seen = []

    def perfect(model, z, vocab, opts=DecodeOptions(), generator=None, **_):
        seen.append(opts)
        return tokens.clone(), torch.zeros(z.size(0))

    monkeypatch.setattr(ev, "generate", perfect)
    assert ev.reconstruction_accuracy(poet.model, tokens, poet.vocab) == 1.0
    assert seen and all(o.greedy for o in seen)

    off_by_one = tokens.clone()
    off_by_one[:, 0] = torch.where(tokens[:, 0] == 5, 6, 5)  # first character always wrong
    monkeypatch.setattr(ev, "generate", lambda m, z, v, o=None, g=None, **_: (off_by_one, torch.zeros(3)))
    clean = poet.tokens([p for p in (JINGYESI, DENGLOU, JIANGXUE) if not poet.vocab.unknown(p)])
    if clean.size(0) == 3:
        assert ev.reconstruction_accuracy(poet.model, clean, poet.vocab) == pytest.approx(19 / 20)


def test_reconstruction_accuracy_of_a_trained_model(trained_run, prepared):
    poet = Poet.load(trained_run, device="cpu")
    tokens = poet.tokens(prepared.splits["test"], allow_unk=True)
    acc = ev.reconstruction_accuracy(poet.model, tokens, poet.vocab, batch_size=5)
    assert 0.0 <= acc <= 1.0
    assert acc == ev.reconstruction_accuracy(poet.model, tokens, poet.vocab)  # greedy: no randomness
    assert ev.reconstruction_accuracy(poet.model, tokens[:0], poet.vocab) == 0.0


# ---- statistics of poem lists -----------------------------------------------------------


def test_distinct_n_counts_ngrams_within_lines():
    # 20 characters, 17 different (明 月 头 repeat); 16 bigrams within lines, 明月 twice
    assert ev.distinct_n([JINGYESI], 1) == pytest.approx(17 / 20)
    assert ev.distinct_n([JINGYESI], 2) == pytest.approx(15 / 16)
    assert ev.distinct_n([JINGYESI, JINGYESI], 2) == pytest.approx(15 / 32)
    assert ev.distinct_n([JINGYESI], 5) == pytest.approx(1.0)
    assert ev.distinct_n([JINGYESI], 6) == 0.0  # no 6-gram inside a 5-character line
    assert ev.distinct_n([], 1) == 0.0
    assert ev.distinct_poems([JINGYESI, list(JINGYESI), DENGLOU]) == 2


def test_copy_rates():
    train = [JINGYESI, DENGLOU]
    mixed = ("床前明月光", "万径人踪灭", "欲穷千里目", "独钓寒江雪")  # 2 lines from train
    assert ev.copy_rates([JINGYESI, mixed], train) == (0.5, pytest.approx(6 / 8))
    assert ev.copy_rates([JIANGXUE], train) == (0.0, 0.0)
    assert ev.copy_rates([], train) == (0.0, 0.0)


def test_rhyme_and_tone_rates_on_known_poems():
    assert ev.rhyme_rate([JINGYESI]) == 1.0  # 霜 / 乡, both 七阳
    assert ev.rhyme_rate([JIANGXUE, DENGLOU]) == 1.0  # 灭 / 雪 (仄韵), 流 / 楼
    unrhymed = JINGYESI[:3] + ("低头思明月",)  # 霜 / 月: 七阳 vs 六月
    assert ev.rhyme_rate([JINGYESI, unrhymed]) == 0.5
    assert ev.rhyme_rate([("床前明月光", "疑是地上霜")]) == 0.0  # too short: no rhyme, no crash
    # 前/月 平仄, 是/上 仄仄, 头/明 平平, 头/故 平仄
    assert ev.tone_rate([JINGYESI]) == 0.5
    undecidable = ("一看山看好",) * 4  # 看 is both 平 and 仄: not counted either way
    assert ev.tone_rate([undecidable]) == 0.0
    assert ev.tone_rate([JINGYESI, undecidable]) == 0.5
    with pytest.raises(ConfigError):
        ev.rhyme_rate([JINGYESI], scheme="nope")


def test_a_rhyme_on_the_same_character_is_no_rhyme():
    """重韵 (line 4 ending on line 2's own character) rhymes in every group check, and is no
    rhyme in any rhyme figure: it is reported on its own."""
    chongyun = JINGYESI[:3] + ("低头思故霜",)  # 霜 / 霜
    assert ev.rhyme_rate([chongyun]) == 0.0 and ev.rhyme_rate([chongyun], "xinyun") == 0.0
    assert ev.rhyme_rate([JINGYESI, chongyun]) == 0.5
    assert ev.same_char_rhyme_rate([JINGYESI, chongyun]) == 0.5
    assert ev.same_char_rhyme_rate([JINGYESI]) == 0.0 and ev.same_char_rhyme_rate([]) == 0.0
    stats = ev.sample_stats([JINGYESI, chongyun], [])
    assert stats.rhyme_rate == stats.rhyme_pingshui == stats.rhyme_xinyun == 0.5
    assert stats.same_char_rhyme == 0.5


def test_doubled_and_thrice_rates():
    diezi = ("处处闻啼鸟", "夜来风雨声", "花落知多少", "春眠不觉晓")  # 处处: a doubled character
    across = ("床前明月光", "光是地上霜", "举头望明月", "低头思故乡")  # 光 / 光 across a line break: not doubled
    thrice = ("山中山色好", "山下水长流", "欲穷千里目", "更上一层楼")  # 山 three times
    assert ev.doubled_rate([diezi, across, thrice]) == pytest.approx(1 / 3)
    assert ev.thrice_rate([diezi, across, thrice]) == pytest.approx(1 / 3)
    assert ev.doubled_rate([]) == 0.0 and ev.thrice_rate([]) == 0.0
    stats = ev.sample_stats([diezi, thrice], [])
    assert stats.doubled_char == 0.5 and stats.char_3_times == 0.5


def test_well_formed_rate():
    head = JINGYESI[:3]
    bad = [head, head + ("低头思故乡啊",), head + ("低头思故x",), head + ("低头，故乡",)]
    assert ev.well_formed_rate([JINGYESI] + bad) == pytest.approx(1 / 5)
    assert ev.well_formed_rate([]) == 0.0


SAMPLE_STATS_KEYS = [
    "poems",
    "distinct",
    "distinct_1",
    "distinct_2",
    "copied_poems",
    "copied_lines",
    "rhyme_rate",
    "tone_rate",
    "well_formed",
    "rhyme_pingshui",
    "rhyme_xinyun",
    "same_char_rhyme",
    "doubled_char",
    "char_3_times",
]


def test_sample_stats_keys_and_values():
    stats = ev.sample_stats([JINGYESI, JINGYESI, DENGLOU], [JINGYESI])
    assert list(stats.to_dict()) == SAMPLE_STATS_KEYS
    assert stats.poems == 3 and stats.distinct == 2
    assert stats.copied_poems == pytest.approx(2 / 3)
    assert stats.well_formed == 1.0 and stats.rhyme_rate == 1.0


# ---- the whole report -------------------------------------------------------------------

REPORT_KEYS = {
    "likelihood": {"iw_nll", "iw_samples", "ppl", "rec", "kl", "nelbo"},
    "latent": {
        "latent_dim",
        "active_units",
        "mutual_information",
        "reconstruction_accuracy",
        "train_reconstruction_accuracy",
    },
    "samples": set(SAMPLE_STATS_KEYS),
    "meta": {
        "poems",
        "unk_rate",
        "temperature",
        "prior",
        "repetition_rule",
        "rerank",
        "prosody_weight",
        "bigram_correction",
        "seed",
        "scheme",
        "device",
        "seconds",
    },
}
REPORT_KEYS["reference"] = REPORT_KEYS["samples"]


def _check_report(report: ev.EvaluationReport, heldout: int) -> None:
    assert report.meta.poems == heldout
    assert report.reference.poems == heldout
    report = report.to_dict()  # the JSON of `poetvae evaluate --json`
    assert set(report) == set(REPORT_KEYS)
    for section, keys in REPORT_KEYS.items():
        assert set(report[section]) == keys, section
        for key, value in report[section].items():
            if not isinstance(value, str):
                assert isinstance(value, (int, float)) and math.isfinite(value), (section, key)
    json.dumps(report, allow_nan=False)


def test_evaluate_run_on_a_trained_model(trained_run, prepared):
    poet = Poet.load(trained_run, device="cpu")
    test, train = prepared.splits["test"], prepared.splits["train"]
    report = ev.evaluate_run(poet, test, train, samples=50, iw_samples=5, seed=3)
    _check_report(report, len(test))
    lik, lat = report.likelihood, report.latent
    assert lik.iw_samples == 5
    assert lik.ppl == pytest.approx(math.exp(lik.iw_nll / 21))
    assert lik.nelbo == pytest.approx(lik.rec + lik.kl)
    assert lik.iw_nll < lik.nelbo + 5  # a bound at least as tight, up to sampling noise
    assert lat.latent_dim == poet.config.model.latent_dim
    assert 0 <= lat.active_units <= lat.latent_dim
    assert lat.mutual_information <= math.log(len(test)) + 0.5
    assert 0 <= lat.reconstruction_accuracy <= 1 and 0 <= lat.train_reconstruction_accuracy <= 1
    assert report.meta.prior == "normal" and report.meta.repetition_rule is True
    assert report.samples.poems == 50 and report.samples.well_formed == 1.0
    # the repetition rule: no character a third time, no 重韵 (the tiny vocabulary is large enough)
    assert report.samples.char_3_times == 0.0 and report.samples.same_char_rhyme == 0.0
    assert report.reference.well_formed == 1.0
    assert report.reference.copied_poems == 0.0  # the splits are disjoint
    assert report.meta.unk_rate >= 0 and report.meta.scheme == "pingshui"
    # deterministic for a seed, and the caller's global RNG is left alone
    state = torch.get_rng_state()
    again = ev.evaluate_run(poet, test, train, samples=50, iw_samples=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for section in ("likelihood", "latent", "samples", "reference"):
        assert getattr(again, section) == getattr(report, section)


def test_copies_are_counted_against_the_pretraining_poems_too(trained_run, prepared):
    poet = Poet.load(trained_run, device="cpu")
    test, train = prepared.splits["test"], prepared.splits["train"]
    alone = ev.evaluate_run(poet, test, train, samples=0, iw_samples=1)
    with_test = ev.evaluate_run(poet, test, train, samples=0, iw_samples=1, pretraining=test[:2])
    assert alone.reference.copied_poems == 0.0
    assert with_test.reference.copied_poems == pytest.approx(2 / len(test))
    assert with_test.latent == alone.latent  # training reconstruction is the run's own poems'


def test_train_reconstruction_accuracy_is_measured_on_training_poems(trained_run, prepared, monkeypatch):
    poet = Poet.load(trained_run, device="cpu")
    test, train = prepared.splits["test"], prepared.splits["train"]
    # the held-out poems given as the training poems: the same figure
    report = ev.evaluate_run(poet, test, test, samples=0, iw_samples=1)
    assert report.latent.train_reconstruction_accuracy == report.latent.reconstruction_accuracy
    # at most TRAIN_RECONSTRUCTED of them, chosen with the seed
    seen = []
    accuracy = ev.reconstruction_accuracy
    monkeypatch.setattr(ev, "reconstruction_accuracy", lambda m, t, v, **kw: seen.append(t) or accuracy(m, t, v, **kw))
    monkeypatch.setattr(ev, "TRAIN_RECONSTRUCTED", 7)
    for seed in (0, 0, 1):
        ev.evaluate_run(poet, test, train, samples=0, iw_samples=1, seed=seed)
    rows = [t for t in seen if t.size(0) != len(test)]
    assert [t.size(0) for t in rows] == [7, 7, 7]
    assert torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])
    everything = {tuple(r) for r in poet.tokens(train, allow_unk=True).tolist()}
    assert all(tuple(r) in everything for r in rows[0].tolist())


def test_evaluate_run_on_a_no_latent_model(prepared):
    torch.manual_seed(0)
    cfg = Config(
        model=ModelConfig(
            vocab_size=len(prepared.vocab), embed_dim=8, highway_layers=1, hidden_dim=8, latent_dim=4, use_latent=False
        )
    )
    poet = Poet(PoetVAE(cfg.model), prepared.vocab, cfg, torch.device("cpu"))
    test, train = prepared.splits["test"], prepared.splits["train"]
    report = ev.evaluate_run(poet, test, train, samples=10, iw_samples=3, scheme="xinyun")
    _check_report(report, len(test))
    # the same numbers, summed in a different order (per poem in float64 vs in float32)
    assert report.likelihood.iw_nll == pytest.approx(report.likelihood.rec, rel=1e-6)
    assert report.likelihood.kl == 0.0
    assert report.latent == ev.Latent(
        latent_dim=0,
        active_units=0,
        mutual_information=0.0,
        reconstruction_accuracy=report.latent.reconstruction_accuracy,
        train_reconstruction_accuracy=report.latent.train_reconstruction_accuracy,
    )
    with pytest.raises(ConfigError):
        ev.evaluate_run(poet, test, train, samples=1, iw_samples=1, scheme="nope")
    with pytest.raises(ValueError):
        ev.evaluate_run(poet, [], train)
