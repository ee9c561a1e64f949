import dataclasses
import json
import math

import pytest
import torch
from helpers import assert_well_formed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poetvae.config import ModelConfig
from poetvae.controls import Controls
from poetvae.decode import DecodeOptions, allowed_by_room, generate, latent_path
from poetvae.evaluate import evaluate_run
from poetvae.form import FORM, Poem
from poetvae.model import PoetVAE
from poetvae.poet import Poet
from poetvae.sampling import (
    TokenMask,
    argmax_in_blocks,
    choose_allowed,
    choose_token,
    choose_token_plain,
    draw_by_cdf,
)
from poetvae.step_decoder import StepDecoder
from poetvae.vocab import EOS, PAD, Vocab

HAN = "天地人山水风花雪月春秋日夜云江河明光霜乡"


def make_vocab(words: list[str]) -> Vocab:
    tokens = list(dict.fromkeys(list(HAN) + words))
    return Vocab(
        ["<pad>", "<unk>", "<bos>", "<eos>"] + tokens, [0] * 4 + [1] * len(tokens), "jieba" if words else "char"
    )


def output_bias(model: PoetVAE) -> torch.Tensor:
    """The bias of the output layer over the ids it scores directly: the whole vocabulary's
    for the full layer, the head's (the most frequent ids, the specials first) for the adaptive one."""
    out = model.decoder.out
    return out.head.bias if model.decoder.adaptive else out.bias


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    words=st.lists(
        st.sampled_from(["明月", "春风", "江山", "白日依", "故乡人", "天地人山水"]), max_size=4, unique=True
    ),
    temperature=st.floats(0.05, 5.0),
    top_k=st.integers(0, 30),
    top_p=st.floats(0.05, 1.0),
    greedy=st.booleans(),
    scale=st.floats(0.0, 20.0),
    layer=st.sampled_from(["adaptive", "full"]),
)
def test_random_models_only_write_well_formed_poems(seed, words, temperature, top_k, top_p, greedy, scale, layer):
    """Whatever the weights (scaled up to make special tokens overwhelmingly likely), the
    masks leave only well-formed poems."""
    torch.manual_seed(seed)
    vocab = make_vocab(words)
    model = PoetVAE(
        ModelConfig(
            vocab_size=len(vocab),
            embed_dim=8,
            highway_layers=1,
            hidden_dim=8,
            latent_dim=3,
            dropout=0.0,
            output_layer=layer,
        )
    ).eval()
    with torch.no_grad():
        output_bias(model)[:4] += scale  # push <pad>/<unk>/<bos>/<eos> to the top
    z = torch.randn(16, 3)
    ids, logprob, _ = generate(
        model, z, vocab, DecodeOptions(temperature, top_k, top_p, greedy), generator=torch.Generator().manual_seed(seed)
    )
    assert ids.shape == (16, FORM.seq_len)
    assert torch.isfinite(logprob).all() and (logprob <= 0).all()
    assert_well_formed(vocab, ids)


def test_greedy_is_deterministic_and_seed_fixes_sampling():
    vocab = make_vocab([])
    model = PoetVAE(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=8, latent_dim=3)).eval()
    z = torch.randn(5, 3)
    g1 = generate(model, z, vocab, DecodeOptions(greedy=True))[0]
    g2 = generate(model, z, vocab, DecodeOptions(greedy=True))[0]
    assert g1.equal(g2)
    s1 = generate(model, z, vocab, DecodeOptions(), generator=torch.Generator().manual_seed(3))[0]
    s2 = generate(model, z, vocab, DecodeOptions(), generator=torch.Generator().manual_seed(3))[0]
    s3 = generate(model, z, vocab, DecodeOptions(), generator=torch.Generator().manual_seed(4))[0]
    assert s1.equal(s2) and not s1.equal(s3)
    assert generate(model, z, vocab, DecodeOptions(seed=3))[0].equal(s1)  # no generator: one seeded with the seed


def test_logprob_is_the_model_probability_of_the_poem():
    vocab = make_vocab([])
    model = PoetVAE(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=8, latent_dim=3, dropout=0.0)).eval()
    z = torch.randn(4, 3)
    ids, logprob, _ = generate(model, z, vocab, DecodeOptions(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec = model.reconstruction_loss(ids, model.decode(z, PoetVAE.teacher_inputs(ids))[0])
    assert torch.allclose(-rec, logprob, atol=1e-4)


def test_room_table():
    vocab = make_vocab(["明月", "白日依", "天地人山水"])
    table = allowed_by_room(vocab.token_chars())
    idx = vocab.index
    assert table[1, idx["天"]] and not table[1, idx["明月"]]
    assert table[3, idx["白日依"]] and not table[2, idx["白日依"]]
    assert table[5, idx["天地人山水"]]
    assert table[0].nonzero().flatten().tolist() == [EOS]
    assert table[6].nonzero().flatten().tolist() == [PAD]
    assert not table[1:6, :4].any()  # never a special token inside a poem


def test_latent_path_ends_and_slerp_norm():
    a, b = torch.randn(16), torch.randn(16)
    for method in ("linear", "slerp"):
        path = latent_path(a, b, 7, method)
        assert path.shape == (7, 16)
        # exactly: the ends of a greedy path are then the reconstructions of A and B
        assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    same_norm = b / b.norm() * a.norm()
    norms = latent_path(a, same_norm, 9, "slerp").norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, a.norm().item()), rtol=1e-4)
    with pytest.raises(ValueError):
        latent_path(a, b, 5, "cubic")


def test_decode_options_reject_bad_values():
    for bad in (
        {"temperature": 0.0},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"beam": 0},
        {"rerank": 0},
        {"batch_size": 0},
    ):
        with pytest.raises(ValueError):
            DecodeOptions(**bad)


def test_draw_follows_the_distribution_and_never_picks_a_masked_token():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]).expand(40_000, 5)
    u = torch.rand(40_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tokens, total = draw_by_cdf(probs, u)
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert freq[1] == 0 and freq[4] == 0
    assert torch.allclose(freq, probs[0], atol=0.01)


def test_draw_handles_a_vocabulary_that_is_not_a_whole_number_of_blocks():
    weights = torch.zeros(130)
    weights[[0, 63, 64, 127, 128, 129]] = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 1.0])
    u = torch.rand(60_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tokens, total = draw_by_cdf(weights.expand(60_000, 130), u, block=64)
    freq = torch.bincount(tokens, minlength=130).float() / tokens.numel()
    assert torch.allclose(total, torch.full_like(total, 10.0, dtype=torch.float64))
    assert set(tokens.unique().tolist()) == {0, 63, 64, 127, 128, 129}
    assert torch.allclose(freq, weights / 10, atol=0.01)


def test_argmax_in_blocks_equals_torch_argmax_including_ties():
    g = torch.Generator().manual_seed(0)
    for v in (5, 64, 100, 4600):
        x = torch.randint(0, 7, (50, v), generator=g).float()  # many ties: the first must win
        index, value = argmax_in_blocks(x)
        assert index.equal(x.argmax(dim=1)) and value.equal(x.amax(dim=1))


@pytest.mark.parametrize("layer", ["adaptive", "full"])
@pytest.mark.parametrize("layers", [1, 2])
def test_step_decoder_equals_the_model_decoder(layers, layer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, embed_dim=8, hidden_dim=6, latent_dim=3, decoder_layers=layers, output_layer=layer)
    model = PoetVAE(cfg).eval()
    z = torch.randn(4, 3)
    inputs = torch.cat([torch.full((4, 1), 2), torch.randint(4, 30, (4, 6))], dim=1)
    want, _ = model.decode(z, inputs)
    step = StepDecoder(model)
    state, z_gates = model.decoder.initial_state(z), step.z_gates(z)
    for t in range(inputs.size(1)):
        hidden, state = step(inputs[:, t], torch.full((4,), t), z_gates, state)
        assert torch.allclose(step.logits(hidden), want[:, t], atol=1e-5)


@pytest.mark.parametrize("z_skip", ["shared", "position"])
def test_the_skip_connection_from_z_decodes_step_by_step_as_teacher_forced(z_skip):
    """The skip connection (ModelConfig.z_skip) starts at zero, so it changes nothing until
    trained; with weights, the step decoder adds what teacher forcing adds, position by
    position, and generation scores its poems as teacher forcing does."""
    torch.manual_seed(0)
    vocab = make_vocab([])
    cfg = ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=6, latent_dim=3, z_skip=z_skip)
    model = PoetVAE(cfg).eval()
    z = torch.randn(4, 3)
    inputs = torch.cat([torch.full((4, 1), 2), torch.randint(4, len(vocab), (4, 6))], dim=1)
    plain = PoetVAE(dataclasses.replace(cfg, z_skip="none")).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("decoder.z_out")})
    assert torch.equal(model.decode(z, inputs)[0], plain.decode(z, inputs)[0])  # zero at the start
    with torch.no_grad():
        model.decoder.z_out.weight.normal_(std=2.0)
        model.decoder.z_out.bias.normal_()
    want, _ = model.decode(z, inputs)
    assert not torch.allclose(want, plain.decode(z, inputs)[0], atol=1e-3)
    step = StepDecoder(model)
    state, z_gates, z_out = model.decoder.initial_state(z), step.z_gates(z), step.z_output(z)
    positions = model.token_chars[inputs].cumsum(dim=1)
    for t in range(inputs.size(1)):
        hidden, state = step(inputs[:, t], positions[:, t], z_gates, state)
        hidden = hidden + step.skip_term(z_out, positions[:, t])
        assert torch.allclose(step.logits(hidden), want[:, t], atol=1e-5)
    for options in (DecodeOptions(), DecodeOptions(greedy=True), DecodeOptions(beam=3)):
        ids, logprob, _ = generate(model, z, vocab, options, generator=torch.Generator().manual_seed(1))
        assert_well_formed(vocab, ids)
        logits, _ = model.decode(z, PoetVAE.teacher_inputs(ids))
        assert torch.allclose(logprob, -PoetVAE.reconstruction_loss(ids, logits), atol=1e-4)


@pytest.mark.parametrize("layer", ["adaptive", "full"])
def test_a_temperature_too_low_for_float_range_still_samples_allowed_tokens(layer):
    vocab = make_vocab([])
    cfg = ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=8, latent_dim=3, dropout=0.0, output_layer=layer)
    model = PoetVAE(cfg).eval()
    with torch.no_grad():
        output_bias(model)[:4] += 200.0  # the allowed tokens' probabilities underflow to 0
    ids, logprob, _ = generate(
        model, torch.randn(6, 3), vocab, DecodeOptions(temperature=0.05), generator=torch.Generator().manual_seed(0)
    )
    assert_well_formed(vocab, ids)
    assert torch.isfinite(logprob).all() and (logprob < -1000).all()


CHOICES = [
    {},
    {"temperature": 0.7},
    {"temperature": 1.6},
    {"greedy": True},
    {"temperature": 0.8, "top_k": 20},
    {"temperature": 1.3, "top_p": 0.8},
    {"top_k": 50, "top_p": 0.9},
]


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("same_for_all_rows", [True, False])
@pytest.mark.parametrize("vocab_size", [300, 4600])
def test_choose_token_picks_like_the_plain_algorithm(choice, same_for_all_rows, vocab_size):
    """choose_token, by each of its ways (the softmax, and exp without the row-maximum shift
    for logits known to be small), picks the tokens that the plain softmax / filter /
    CDF inversion picks for the same uniforms, and returns the model's own log-probability
    of each (temperature 1, no mask)."""
    g = torch.Generator().manual_seed(vocab_size)
    logits = torch.randn(400, vocab_size, generator=g) * 3
    if same_for_all_rows:
        mask = TokenMask(forbidden=torch.tensor([0, 1, 2, 3, 150]))
    else:
        mask = TokenMask(allowed=torch.rand(400, vocab_size, generator=g) < 0.7)
    allowed = mask.dense(logits)
    u = torch.rand(400, 1, dtype=torch.float64, generator=g)
    want_token, want_logp = choose_token_plain(logits, allowed, u, **choice)
    assert torch.allclose(want_logp, torch.log_softmax(logits, dim=-1).gather(1, want_token[:, None]).squeeze(1))
    normalized = torch.log_softmax(logits, dim=-1)  # the adaptive softmax's kind of scores
    ways = [  # the fast way (where it applies), the softmax, and scores that are log-probabilities
        (logits, {"logit_bound": float(logits.abs().max())}),
        (logits, {"logit_bound": math.inf}),
        (normalized, {"log_probs": True}),
    ]
    for scores, how in ways:
        token, logp = choose_token(scores.clone(), mask, u, **how, **choice)
        assert allowed.gather(1, token[:, None]).all()
        same = token == want_token
        # only rounding at a boundary between two tokens may tell the two apart
        assert same.float().mean() > 0.99
        assert torch.allclose(logp[same], want_logp[same], atol=1e-4)


def test_the_plain_algorithm_follows_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]]).expand(40_000, 5)
    allowed = torch.tensor([[True, True, True, True, False]]).expand(40_000, 5)
    u = torch.rand(40_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    token, _ = choose_token_plain(logits, allowed, u, temperature=0.5, top_k=3)
    freq = torch.bincount(token, minlength=5).float() / token.numel()
    want = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.5, dim=0)
    assert torch.allclose(freq[:3], want, atol=0.01) and freq[3:].sum() == 0
    greedy, _ = choose_token_plain(logits, allowed, None, greedy=True)
    assert (greedy == 0).all()


def test_generation_under_bf16_autocast_is_well_formed():
    """The GPU path decodes under bf16 autocast (bench); the CPU's autocast takes the same
    code: mixed dtypes in the step decoder's in-place updates must still give poems."""
    vocab = make_vocab([])
    model = PoetVAE(
        ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=8, latent_dim=3, decoder_layers=2)
    ).eval()
    z = torch.randn(6, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids, logprob, _ = generate(
            model, z, vocab, DecodeOptions(temperature=0.8), generator=torch.Generator().manual_seed(0)
        )
    assert_well_formed(vocab, ids)
    assert torch.isfinite(logprob).all()


def test_poet_samples_are_poems(trained_run):
    poet = Poet.load(trained_run, device="cpu")
    samples = poet.sample(3, DecodeOptions(seed=0, rerank=2, prosody_weight=1.0), with_z=True)
    assert len(samples) == 3
    for s in samples:
        assert isinstance(s, Poem) and s.text == "".join(s.lines) and len(s.text) == 20
        assert len(s.z) == poet.model.cfg.latent_dim and s.logprob < 0 and s.backoff == ()
    assert poet.sample(3, DecodeOptions(seed=0, rerank=2, prosody_weight=1.0)) == [
        dataclasses.replace(s, z=None) for s in samples
    ]


def test_a_rerank_by_prosody_keeps_the_best_candidate_and_the_batch_size(trained_run):
    """rerank N decodes N candidates per z, batch_size rows at a time (candidates included),
    and keeps the best by prosody first when the prosody weight is large; greedy decoding and
    beam search decode one (every candidate would be the same poem)."""
    from poetvae.prosody import prosody_score

    poet = Poet.load(trained_run, device="cpu")
    best = poet.sample(7, DecodeOptions(seed=0, rerank=3, prosody_weight=100.0, batch_size=4))
    assert len(best) == 7 and all(FORM.fits(s.lines) for s in best)
    plain = poet.sample(21, DecodeOptions(seed=0))
    mean = lambda poems: sum(prosody_score(p.lines) for p in poems) / len(poems)  # noqa: E731
    assert mean(best) > mean(plain)
    greedy = DecodeOptions(greedy=True, seed=0)
    assert poet.sample(4, dataclasses.replace(greedy, rerank=3)) == poet.sample(4, greedy)


# ---- weights gone wrong: NaN, infinite or huge ------------------------------------------
BROKEN_VALUES = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38]


def break_weights(model: PoetVAE, values: list[float], share: float, seed: int) -> None:
    """Overwrite a `share` of every floating-point parameter and buffer with `values`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                hit = torch.rand(t.shape, generator=g) < share
                pick = torch.randint(len(values), t.shape, generator=g)
                t.copy_(torch.where(hit, torch.tensor(values)[pick], t))


def assert_poem(sample) -> None:
    assert len(sample.lines) == 4 and all(len(line) == 5 for line in sample.lines), sample.lines
    assert all("\u4e00" <= ch <= "\u9fff" for line in sample.lines for ch in line), sample.lines


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_weights_even_nan_or_infinite_only_write_well_formed_poems(trained_run, prepared, data):
    """Weights with NaN, +-inf or huge entries (a diverged run), with every way of decoding:
    sampling, greedy, top-k / top-p, beam, rerank, every control, --infer-z, interpolation."""
    poet = Poet.load(trained_run, device="cpu")
    values = data.draw(st.lists(st.sampled_from(BROKEN_VALUES), min_size=1, max_size=3, unique=True), "values")
    share = data.draw(st.sampled_from([1.0, 0.3, 0.02]), "share")
    break_weights(poet.model, values, share, data.draw(st.integers(0, 2**16), "seed"))
    poem = prepared.splits["train"][data.draw(st.integers(0, 20), "poem")]
    prefix = poem.lines[: data.draw(st.integers(0, 3), "prefix lines")]
    controls = Controls(
        rhyme=data.draw(st.booleans(), "rhyme"),
        tones=data.draw(st.booleans(), "tones"),
        acrostic=data.draw(st.sampled_from([None, "".join(line[0] for line in poem.lines)]), "acrostic"),
        prefix=prefix,
    )
    options = DecodeOptions(
        temperature=data.draw(st.sampled_from([0.01, 0.8, 1.0, 5.0]), "temperature"),
        top_k=data.draw(st.sampled_from([0, 1, 5]), "top_k"),
        top_p=data.draw(st.sampled_from([1.0, 0.5, 1e-6]), "top_p"),
        greedy=data.draw(st.booleans(), "greedy"),
        beam=data.draw(st.integers(1, 3), "beam"),
        rerank=data.draw(st.integers(1, 2), "rerank"),
        prosody_weight=data.draw(st.sampled_from([0.0, 1.0]), "prosody_weight"),
        controls=controls,
        infer_z=bool(prefix) and data.draw(st.booleans(), "infer_z"),
        seed=0,
    )
    for sample in poet.sample(3, options, with_z=True):
        assert_poem(sample)
        assert sample.lines[: len(prefix)] == prefix
    other = prepared.splits["train"][21]
    method = data.draw(st.sampled_from(["linear", "slerp"]), "method")
    path = poet.interpolate(poem, other, steps=3, method=method, options=dataclasses.replace(options, rerank=1))
    for sample in path:
        assert_poem(sample)


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    values=st.lists(st.sampled_from([math.nan, math.inf, -math.inf]), min_size=1, max_size=3, unique=True),
    share=st.sampled_from([1.0, 0.3, 0.02]),
)
def test_evaluating_nan_or_infinite_weights_gives_a_report_and_json(trained_run, prepared, values, share):
    """evaluate_run of broken weights: well-formed samples, and a to_dict() that is valid
    JSON (null where a number is not finite). Finite but huge weights are not here:
    train.elbo_terms's perplexity overflows math.exp for them (another helper's file)."""
    poet = Poet.load(trained_run, device="cpu")
    break_weights(poet.model, values, share, 0)
    heldout, train = prepared.splits["valid"][:8], prepared.splits["train"][:50]
    report = evaluate_run(poet, heldout, train, samples=6, iw_samples=2)
    assert report.samples.well_formed == 1.0
    json.loads(json.dumps(report.to_dict(), allow_nan=False))


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("same_for_all_rows", [True, False])
def test_choose_token_returns_an_allowed_token_whatever_the_logits(choice, same_for_all_rows):
    """Rows of NaN, of -inf everywhere, +inf on forbidden or allowed tokens, huge values at a
    low temperature: always an allowed token, among the +inf ones when there are some."""
    v = 300
    logits = torch.randn(8, v)
    logits[0] = math.nan
    logits[1] = -math.inf
    logits[2, :4] = math.inf  # forbidden tokens only
    logits[3, [7, 9]] = math.inf
    logits[4] = torch.randn(v) * 3e38
    logits[5, 10] = math.nan
    logits[6, ::2] = -math.inf
    logits[7] = torch.randn(v).clamp(min=0) * 1e30
    if same_for_all_rows:
        mask = TokenMask(forbidden=torch.tensor([0, 1, 2, 3, 7, 150]))
    else:
        mask = TokenMask(allowed=torch.rand(8, v, generator=torch.Generator().manual_seed(0)) < 0.5)
    allowed = mask.dense(logits)
    u = torch.rand(8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ways = [{"logit_bound": b} for b in (float(logits.abs().max()), 10.0, math.inf)]  # 10: a wrong bound
    for how in [*ways, {"log_probs": True}]:  # and scores said to be log-probabilities that are not
        token, _ = choose_token(logits.clone(), mask, u, **how, **choice)
        assert allowed.gather(1, token[:, None]).all(), token
        if allowed[3, 9] and allowed[3, 7]:
            assert token[3] in (7, 9)
        token = choose_allowed(logits, allowed, u, **choice)
        assert allowed.gather(1, token[:, None]).all(), token
