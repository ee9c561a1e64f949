import dataclasses
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from poetvae.config import ModelConfig
from poetvae.form import FORM
from poetvae.model import AdaptiveOutput, Highway, PoetVAE, adaptive_cutoffs
from poetvae.vocab import BOS, EOS, UNK

CFG = ModelConfig(vocab_size=40, embed_dim=12, highway_layers=2, hidden_dim=16, latent_dim=5, dropout=0.0)
OUTPUT_LAYERS = ("adaptive", "full")


def batch(b=6, v=40):
    x = torch.randint(4, v, (b, FORM.seq_len))
    x[:, -1] = EOS
    return x


@pytest.mark.parametrize("layer", OUTPUT_LAYERS)
def test_shapes(layer):
    m = PoetVAE(dataclasses.replace(CFG, output_layer=layer))
    x = batch()
    out = m(x)
    assert out["hidden"].shape == (6, FORM.seq_len, CFG.hidden_dim)
    assert m.decoder.scores(out["hidden"]).shape == (6, FORM.seq_len, 40)
    assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (6, 5)
    assert m.sample_prior(3).shape == (3, 5)
    h, c = m.decoder.initial_state(out["z"])
    assert h.shape == c.shape == (CFG.decoder_layers, 6, CFG.hidden_dim)


def test_kl_matches_closed_form_and_torch_distributions():
    m = PoetVAE(CFG)
    x = batch()
    out = m(x)
    terms = m.loss(x, out)
    mu, logvar = out["mu"], out["logvar"]
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(terms["kl"], kl_divergence(q, p).sum(dim=1), atol=1e-5)
    assert (terms["kl"] >= 0).all()


@pytest.mark.parametrize("layer", OUTPUT_LAYERS)
def test_reconstruction_is_summed_token_cross_entropy(layer):
    m = PoetVAE(dataclasses.replace(CFG, output_layer=layer))
    x = batch()
    out = m(x)
    terms = m.loss(x, out, beta=0.0)
    logp = torch.log_softmax(m.decoder.scores(out["hidden"]), dim=-1).gather(2, x[..., None]).squeeze(-1)
    assert torch.allclose(terms["rec"], -logp.sum(dim=1), atol=1e-4)
    assert torch.isclose(terms["loss"], terms["rec"].mean())


def test_beta_and_free_bits_enter_the_objective():
    m = PoetVAE(CFG)
    x = batch()
    out = m(x)
    t1 = m.loss(x, out, beta=1.0)
    t2 = m.loss(x, out, beta=0.5)
    assert torch.isclose(t1["loss"] - t2["loss"], 0.5 * t1["kl"].mean(), atol=1e-4)
    # a floor far above the KL of each dim: the KL term is exactly latent_dim * floor
    fb = m.loss(x, out, beta=1.0, free_bits=100.0)
    assert torch.isclose(fb["loss"], fb["rec"].mean() + 100.0 * CFG.latent_dim)


def test_decoder_is_causal_and_uses_z():
    m = PoetVAE(CFG).eval()
    z = torch.randn(2, 5)
    inp = torch.cat([torch.full((2, 1), BOS), batch(2)[:, :-1]], dim=1)
    logits, _ = m.decode(z, inp)
    changed = inp.clone()
    changed[:, 10] = 4 if changed[0, 10] != 4 else 5
    logits2, _ = m.decode(z, changed)
    assert torch.allclose(logits[:, :10], logits2[:, :10])  # earlier steps cannot see later inputs
    logits3, _ = m.decode(z + 1.0, inp)
    assert not torch.allclose(logits[:, 0], logits3[:, 0])  # z reaches the first step


@pytest.mark.parametrize("layer", OUTPUT_LAYERS)
def test_stepwise_decoding_equals_teacher_forcing(layer):
    m = PoetVAE(dataclasses.replace(CFG, output_layer=layer)).eval()
    z = torch.randn(3, 5)
    inp = torch.cat([torch.full((3, 1), BOS), batch(3)[:, :-1]], dim=1)
    full, _ = m.decode(z, inp)
    state, steps = None, []
    positions = m.token_chars[inp].cumsum(dim=1)
    for t in range(FORM.seq_len):
        logits, state = m.decode(z, inp[:, t : t + 1], state, positions[:, t : t + 1])
        steps.append(logits)
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)


def test_word_dropout_only_while_training():
    m = PoetVAE(CFG).eval()
    m.reparameterize = lambda mu, logvar, generator=None, eps=None: mu  # a fixed z for the comparison
    x = batch()
    assert torch.allclose(m(x, word_dropout=1.0)["hidden"], m(x, word_dropout=0.0)["hidden"])
    m.train()  # CFG has dropout 0, so train mode differs from eval only by word dropout
    mu, _ = m.encode(x)
    unk_inputs = torch.full_like(x, UNK)
    unk_inputs[:, 0] = BOS
    expected, _ = m.decode_hidden(mu, unk_inputs)
    assert torch.allclose(m(x, word_dropout=1.0)["hidden"], expected, atol=1e-5)
    assert not torch.allclose(m(x, word_dropout=0.0)["hidden"], expected, atol=1e-3)


def test_encoder_noise_hides_characters_from_the_encoder_only_while_training():
    m = PoetVAE(CFG).eval()
    x = batch()
    everything = torch.ones_like(x, dtype=torch.bool)
    # evaluation ignores the mask: the encoder reads the poem
    assert torch.allclose(m(x, encoder_drop=everything)["mu"], m.encode(x)[0])
    m.train()  # CFG has dropout 0: train mode differs only by the masks
    hidden = x.masked_fill(x > EOS, UNK)  # every character <unk>, <eos> and <pad> kept
    out = m(x, encoder_drop=everything)
    assert torch.allclose(out["mu"], m.encode(hidden)[0], atol=1e-6)
    assert not torch.allclose(out["mu"], m.encode(x)[0], atol=1e-4)
    # the decoder still reads (and is scored on) the real poem
    expected, _ = m.decode_hidden(out["z"], m.teacher_inputs(x))
    assert torch.allclose(out["hidden"], expected, atol=1e-5)


def test_no_latent_model_has_no_encoder_and_zero_kl():
    m = PoetVAE(dataclasses.replace(CFG, use_latent=False))
    assert m.encoder is None
    x = batch()
    terms = m.loss(x, m(x), beta=1.0, free_bits=1.0)
    assert torch.all(terms["kl"] == 0)
    assert torch.isclose(terms["loss"], terms["rec"].mean())


def test_highway_starts_near_identity_and_keeps_shape():
    h = Highway(8, 3)
    x = torch.randn(4, 8)
    assert h(x).shape == (4, 8)
    assert Highway(8, 0)(x).equal(x)


@pytest.mark.parametrize("layer", OUTPUT_LAYERS)
def test_overfitting_one_batch_drops_the_loss(layer):
    torch.manual_seed(0)
    m = PoetVAE(dataclasses.replace(CFG, output_layer=layer))
    x = batch(8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        terms = m.loss(x, m(x), beta=0.1)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        first = first if first is not None else terms["loss"].item()
    assert terms["loss"].item() < 0.5 * first
    assert math.isfinite(terms["loss"].item())


def test_vocab_size_must_be_set():
    with pytest.raises(ValueError):
        PoetVAE(ModelConfig())


def test_bn_vae_keeps_the_mean_kl_above_its_floor():
    cfg = dataclasses.replace(CFG, bn_gamma=0.7)
    m = PoetVAE(cfg).train()
    x = batch(64)
    mu, _ = m.encode(x)
    # batch-normalised: per dim, the batch mean of mu^2 is gamma^2 (+ bias^2, 0 at init),
    # a little less where BatchNorm's eps is not small against the batch variance
    second_moment = mu.pow(2).mean(dim=0)
    assert (second_moment <= 0.49 + 1e-4).all() and (second_moment >= 0.40).all(), second_moment
    assert m.encoder.mu_norm.running_mean.abs().sum() > 0  # eval mode will use running stats


def test_decoder_knows_the_character_position():
    m = PoetVAE(CFG).eval()
    z = torch.randn(2, 5)
    inp = torch.cat([torch.full((2, 1), BOS), batch(2)[:, :4]], dim=1)
    a, _ = m.decode(z, inp)
    b, _ = m.decode(z, inp, positions=torch.arange(5).expand(2, 5) + 5)  # as if on line 2
    assert not torch.allclose(a, b)
    assert torch.equal(m.token_chars[inp].cumsum(1)[0], torch.arange(5))


@pytest.mark.parametrize("layer", OUTPUT_LAYERS)
def test_reconstruction_loss_is_the_rec_term_of_the_loss(layer):
    m = PoetVAE(dataclasses.replace(CFG, output_layer=layer)).eval()
    x = batch()
    out = m(x)
    want = m.reconstruction_loss(x, m.decoder.scores(out["hidden"]))
    assert torch.allclose(want, m.loss(x, out)["rec"], atol=1e-5)
    assert torch.allclose(want, m.nll_given_z(out["z"], x), atol=1e-5)


# ---- the adaptive softmax ----------------------------------------------------------------
def test_adaptive_cutoffs_split_the_vocabulary_by_frequency_rank():
    assert adaptive_cutoffs(8277, 2000) == [2000, 4000, 8000]
    assert adaptive_cutoffs(4578, 2000) == [2000, 4000]
    assert adaptive_cutoffs(4001, 2000) == [2000]  # a last cluster of one id would be no cluster
    assert adaptive_cutoffs(40, 2000) == [19]  # a vocabulary smaller than the head: two halves


def _plain_adaptive_log_prob(layer: AdaptiveOutput, h: torch.Tensor) -> torch.Tensor:
    """The adaptive softmax written out as its definition: p(id) = p_head(id) for a head id,
    p_head(cluster i) * p_i(id) for an id of cluster i."""
    head = torch.softmax(h @ layer.head.weight.T + layer.head.bias, dim=-1)
    parts = [head[:, : layer.shortlist_size]]
    for i, tail in enumerate(layer.tail):
        inside = torch.softmax(h @ tail[0].weight.T @ tail[1].weight.T, dim=-1)
        parts.append(head[:, layer.shortlist_size + i, None] * inside)
    return torch.cat(parts, dim=1).log()


def test_adaptive_softmax_is_one_exact_distribution():
    """The full distribution (decoding, scores) equals torch's own log_prob and the plain
    formula, sums to 1, and the training loss (nll, which computes only the clusters its
    targets fall in) is exactly its value at the targets, 0 at <pad>."""
    torch.manual_seed(0)
    layer = AdaptiveOutput(16, 300, 50, 2.0)
    assert layer.cutoffs == [50, 100, 200, 300] and [t[0].out_features for t in layer.tail] == [8, 4, 2]
    h = torch.randn(64, 16) * 3
    full = layer.full_log_prob(h)
    assert torch.allclose(full, layer.log_prob(h), atol=1e-5)
    assert torch.allclose(full, _plain_adaptive_log_prob(layer, h), atol=1e-4)
    assert torch.allclose(full.exp().sum(dim=1), torch.ones(64), atol=1e-5)
    target = torch.randint(0, 300, (64,))
    target[:3] = 0  # <pad>
    target[3:6] = torch.tensor([49, 50, 299])  # either side of a cutoff, and the last id
    want = -full.gather(1, target[:, None]).squeeze(1).masked_fill(target == 0, 0.0)
    assert torch.allclose(layer.nll(h, target), want, atol=1e-5)


def test_adaptive_softmax_gradients_equal_those_of_the_full_distribution():
    torch.manual_seed(1)
    layer = AdaptiveOutput(16, 300, 50, 2.0)
    h = torch.randn(32, 16, requires_grad=True)
    target = torch.randint(1, 300, (32,))
    (g_fast,) = torch.autograd.grad(layer.nll(h, target).sum(), h)
    (g_full,) = torch.autograd.grad(-layer.full_log_prob(h).gather(1, target[:, None]).sum(), h)
    assert torch.allclose(g_fast, g_full, atol=1e-5)


def test_adaptive_loss_stays_fp32_under_bf16_autocast():
    torch.manual_seed(2)
    m = PoetVAE(CFG).train()
    x = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        terms = m.loss(x, out)
    assert out["hidden"].dtype == torch.bfloat16  # the LSTM ran in bf16
    assert terms["rec"].dtype == terms["kl"].dtype == terms["loss"].dtype == torch.float32
