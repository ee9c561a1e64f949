"""`poetvae serve`: the JSON API through FastAPI's test client (every endpoint, the CLI's JSON,
determinism under concurrency, every bad input), and the command itself in a subprocess.
The page in a real browser: test_serve_browser.py."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import Server, one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from poetvae.checkpoint import load_tensors, save_tensors
from poetvae.cli import app as cli_app
from poetvae.form import FORM, is_han
from poetvae.models import BUNDLED, bundled_model
from poetvae.poet import Poet

pytest.importorskip("fastapi", reason='the web extra is not installed (pip install -e ".[web]")')
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed (pip install -e '.[test]')")
with warnings.catch_warnings():  # newer Starlette prefers httpx2 and says so; httpx works with every version
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from poetvae import serve  # noqa: E402  (after the skips: it imports FastAPI)

runner = CliRunner()
JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENGGUANQUE = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
UNKNOWN = "床前明月光，疑是地上霜。举头望明月，低头思故𪚥。"  # 𪚥: in no vocabulary here


def cli_json(*args) -> list[dict]:
    result = runner.invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def poet(trained_run) -> Poet:
    poet = Poet.load(trained_run, device="cpu")
    assert not poet.vocab.unknown(JINGYESI.replace("，", "").replace("。", ""))
    return poet


@pytest.fixture(scope="module")
def client(poet):
    with TestClient(serve.create_app(poet, source="given")) as client:
        yield client


def assert_error(response, status: int, fragment: str = "") -> str:
    """A 4xx (or the given status) whose body is {"error": one line} naming `fragment`."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"], body
    assert fragment in body["error"], body["error"]
    return body["error"]


def assert_quatrain(record: dict) -> None:
    assert len(record["lines"]) == FORM.lines
    assert all(len(line) == FORM.chars_per_line and all(map(is_han, line)) for line in record["lines"])
    assert record["text"] == "，".join(record["lines"][:2]) + "。" + "，".join(record["lines"][2:]) + "。"


# ---- every endpoint, with the CLI's names and JSON --------------------------------------
def test_health_and_model(client, trained_run):
    assert client.get("/api/health").json() == {"status": "ok", "model": trained_run.name}
    info = client.get("/api/model").json()
    assert info["name"] == trained_run.name and info["source"] == "given"
    assert info["latent_dim"] == 6 and info["parameters"] > 0 and info["vocab_size"] > 100
    assert info["limits"]["n"] == serve.MAX_N and info["limits"]["body_bytes"] == serve.MAX_BODY
    assert "七阳" in info["rhyme_groups"]["pingshui"] and len(info["rhyme_groups"]["xinyun"]) == 14


def test_bundled_model_and_its_card():
    """What a user gets right after installing: the bundled model, with its card figures."""
    path = bundled_model()
    if path is None:
        pytest.skip("this install has no bundled model")
    with TestClient(serve.create_app(Poet.load(path, device="cpu"), source=BUNDLED)) as client:
        info = client.get("/api/model").json()
        assert info["name"] == "classical" and info["source"] == "bundled" and info["fitted_prior"]
        card = json.loads((path / "evaluation.json").read_text(encoding="utf-8"))
        assert info["evaluation"]["samples"]["rhyme_rate"] == pytest.approx(card["samples"]["rhyme_rate"])
        assert info["card"].startswith("# classical")
        poems = client.post("/api/sample", json={"n": 2, "seed": 1}).json()["poems"]
        assert len(poems) == 2
        for record in poems:
            assert_quatrain(record)


def test_sample_is_the_cli_json(client, trained_run):
    body = client.post("/api/sample", json={"n": 3, "temp": 0.8, "seed": 1, "with_z": True}).json()
    assert body["poems"] == cli_json("sample", "-m", trained_run, "-n", 3, "--seed", 1, "--format", "json", "--with-z")
    for record in body["poems"]:
        assert_quatrain(record)
        assert len(record["z"]) == 6


def test_sample_controls(client, trained_run):
    request = {"n": 4, "seed": 2, "rhyme": True, "tones": True, "acrostic": "春夏秋冬", "beam": 2}
    poems = client.post("/api/sample", json=request).json()["poems"]
    assert [p["lines"][i][0] for p in poems for i in range(4)] == list("春夏秋冬") * 4
    flags = ["--rhyme", "--tones", "--acrostic", "春夏秋冬", "--beam", 2, "--seed", 2, "-n", 4]
    assert poems == cli_json("sample", "-m", trained_run, *flags, "--format", "json")
    first = client.post("/api/sample", json={"n": 2, "seed": 3, "first_line": "白日依山尽"}).json()["poems"]
    assert [p["lines"][0] for p in first] == ["白日依山尽"] * 2


def test_vary_is_the_cli_json(client, trained_run):
    body = client.post("/api/vary", json={"poem": JINGYESI, "n": 3, "spread": 0.5, "seed": 4}).json()
    assert body["poems"] == cli_json(
        "vary", JINGYESI, "-m", trained_run, "-n", 3, "--spread", 0.5, "--seed", 4, "-f", "json"
    )


def test_reconstruct_is_the_cli_json(client, trained_run):
    body = client.post("/api/reconstruct", json={"poems": [JINGYESI, DENGGUANQUE]}).json()
    assert body["poems"] == cli_json("reconstruct", "-m", trained_run, JINGYESI, DENGGUANQUE, "--format", "json")
    assert body["accuracy"] == pytest.approx(sum(r["accuracy"] for r in body["poems"]) / 2, abs=1e-4)


def test_a_walker_model_serves_the_walks_and_the_poet_the_poems(poet, trained_run, tmp_path):
    """`poetvae serve` on the bundled poet walks with the bundled latent model (create_app's
    walker): vary, reconstruct and interpolate are the walker's, sample the poet's."""
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    weights, meta = load_tensors(other / "model.safetensors")
    weights = {k: v * 1.5 if k.startswith("encoder.") else v for k, v in weights.items()}
    save_tensors(other / "model.safetensors", weights, meta)
    walker = Poet.load(other, device="cpu")
    with TestClient(serve.create_app(poet, source="bundled", walker=walker)) as both:
        info = both.get("/api/model").json()
        assert info["name"] == trained_run.name and info["walker"]["name"] == "other"
        body = both.post("/api/reconstruct", json={"poems": [JINGYESI, DENGGUANQUE]}).json()
        assert body["poems"] == cli_json("reconstruct", "-m", other, JINGYESI, DENGGUANQUE, "--format", "json")
        walk = both.post("/api/interpolate", json={"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 3}).json()
        cli = cli_json("interpolate", JINGYESI, DENGGUANQUE, "-m", other, "--steps", 3, "--format", "json")
        assert [{k: v for k, v in r.items() if k not in ("same_a", "same_b")} for r in walk["path"]] == cli
        sampled = both.post("/api/sample", json={"n": 3, "seed": 2}).json()["poems"]
        assert sampled == cli_json("sample", "-m", trained_run, "-n", 3, "--seed", 2, "--format", "json")


def test_interpolate_is_the_cli_json_with_every_row_compared(client, trained_run):
    body = client.post("/api/interpolate", json={"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 5}).json()
    assert body["a"] == {"text": JINGYESI, "lines": JINGYESI.replace("。", "，").split("，")[:4]}
    assert body["b"]["text"] == DENGGUANQUE
    cli = cli_json("interpolate", JINGYESI, DENGGUANQUE, "-m", trained_run, "--steps", 5, "--format", "json")
    assert [{k: v for k, v in r.items() if k not in ("same_a", "same_b")} for r in body["path"]] == cli
    a, b = "".join(body["a"]["lines"]), "".join(body["b"]["lines"])
    for row in body["path"]:
        text = "".join(row["lines"])
        assert row["same_a"] == [x == y for x, y in zip(text, a)]
        assert row["same_b"] == [x == y for x, y in zip(text, b)]
    assert body["path"][0]["accuracy"] == round(sum(body["path"][0]["same_a"]) / 20, 4)
    assert body["path"][-1]["accuracy"] == round(sum(body["path"][-1]["same_b"]) / 20, 4)


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # served whole by the app: nothing fetched from elsewhere (no CDN), so it works offline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert not re.search(r"""@import|url\(\s*["']?(https?:)?//""", page.text)
    for path in ("/api/sample", "/api/vary", "/api/reconstruct", "/api/interpolate"):
        assert path in page.text  # the page calls the API it documents
    schema = client.get("/openapi.json").json()
    assert {"/api/sample", "/api/vary", "/api/reconstruct", "/api/interpolate", "/api/health", "/api/model"} <= set(
        schema["paths"]
    )
    assert schema["components"]["schemas"]["SampleRequest"]["properties"]["n"]["maximum"] == serve.MAX_N


# ---- a request is a pure function of its body ----------------------------------------------
def test_seeded_requests_agree_under_concurrency(client):
    """The same seeded request 50 times from 8 threads, between other requests (other seeds,
    controls, no seed, other endpoints), gives the one answer it gives alone."""
    request = {"n": 3, "temp": 1.0, "seed": 7, "rhyme": True}
    alone = client.post("/api/sample", json=request).json()

    others = [
        ("/api/sample", {"n": 5, "seed": 8}),
        ("/api/sample", {"n": 2, "temp": 1.5}),  # no seed: fresh randomness
        ("/api/sample", {"n": 2, "seed": 9, "tones": True, "acrostic": "春夏秋冬"}),
        ("/api/vary", {"poem": JINGYESI, "n": 3}),
        ("/api/interpolate", {"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 4, "sample": True}),
    ]
    jobs = [("/api/sample", request)] * 50 + others * 10
    jobs = [jobs[i] for i in torch.randperm(len(jobs), generator=torch.Generator().manual_seed(0)).tolist()]

    def send(job):
        path, body = job
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        return body is request, response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [answer for mine, answer in pool.map(send, jobs) if mine]
    assert len(answers) == 50
    assert all(answer == alone for answer in answers)


def test_inference_runs_off_the_event_loop(poet, monkeypatch):
    """While one request decodes, the server still answers others."""
    started, release = threading.Event(), threading.Event()
    sample = poet.sample

    def slow_sample(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return sample(*args, **kwargs)

    monkeypatch.setattr(poet, "sample", slow_sample)
    with TestClient(serve.create_app(poet)) as client, ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.post, "/api/sample", json={"n": 1, "seed": 1})
        assert started.wait(30)
        assert client.get("/api/health").json()["status"] == "ok"  # answered while the sample waits
        assert not pending.done()
        release.set()
        assert pending.result(timeout=30).status_code == 200


# ---- bad input: a 4xx with one line of JSON, and the server keeps serving -----------------
BAD = [
    # (path, body or raw bytes, status, what the message says)
    ("/api/reconstruct", {"poems": ["床前明月光，疑是地上霜。举头望明月。"]}, 400, "poem 1: expected 4 lines"),
    ("/api/vary", {"poem": "床前明月光，疑是地上霜。举头望明月。"}, 400, "expected 4 lines of 5 characters, got 3"),
    ("/api/interpolate", {"poem_a": JINGYESI, "poem_b": "白日依山尽"}, 400, "expected 4 lines"),
    ("/api/reconstruct", {"poems": [UNKNOWN]}, 400, "not in the model's vocabulary: 𪚥"),
    ("/api/vary", {"poem": UNKNOWN}, 400, "allow_unk"),
    ("/api/interpolate", {"poem_a": JINGYESI, "poem_b": UNKNOWN}, 400, "𪚥"),
    ("/api/sample", {"n": 10**9}, 422, f"n: Input should be less than or equal to {serve.MAX_N}"),
    ("/api/sample", {"n": 0}, 422, "n: Input should be greater than or equal to 1"),
    ("/api/vary", {"poem": JINGYESI, "n": 10**9}, 422, "n: "),
    ("/api/interpolate", {"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 10**9}, 422, "steps: "),
    ("/api/sample", {"beam": 10**9}, 422, "beam: "),
    ("/api/sample", {"rerank": 1000}, 422, "rerank: "),
    ("/api/sample", {"n": 100, "beam": 16}, 422, "n × beam × rerank is 4,800"),  # rerank 3 by default
    ("/api/interpolate", {"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 100, "beam": 16}, 422, "steps × beam"),
    ("/api/reconstruct", {"poems": [JINGYESI] * (serve.MAX_POEMS + 1)}, 422, "poems: "),
    ("/api/reconstruct", {"poems": []}, 422, "poems: "),
    ("/api/sample", b'{"temp": NaN}', 422, "temp: Input should be a finite number"),
    ("/api/sample", b'{"prosody_weight": Infinity}', 422, "prosody_weight: Input should be a finite number"),
    ("/api/sample", {"bigram_correction": 1.5}, 422, "bigram_correction: Input should be less than or equal to 1"),
    ("/api/vary", b'{"poem": "x", "spread": -Infinity}', 422, "spread: "),
    ("/api/sample", b"n=5&temp=0.8", 422, "the body is not valid JSON"),
    ("/api/sample", b'{"n": 5', 422, "the body is not valid JSON"),
    ("/api/sample", b"", 422, "the body must be a JSON object"),
    ("/api/sample", [1, 2], 422, "the body must be a JSON object"),
    ("/api/sample", "n=5", 422, "the body must be a JSON object"),
    ("/api/sample", {"temperature": 0.8}, 422, "temperature: Extra inputs are not permitted"),
    ("/api/sample", {"n": "5"}, 422, "n: Input should be a valid integer"),
    ("/api/sample", {"n": 2.5}, 422, "n: Input should be a valid integer"),
    ("/api/sample", {"rhyme": "yes"}, 422, "rhyme: Input should be a valid boolean"),
    ("/api/sample", {"seed": -1}, 422, "seed: "),
    ("/api/sample", {"seed": 2**64}, 422, "seed: "),
    ("/api/sample", {"temp": 0}, 422, "temp: "),
    ("/api/sample", {"scheme": "tang"}, 422, "scheme: "),
    ("/api/sample", {"prior": "uniform"}, 422, "prior: "),
    ("/api/sample", {"rhyme_group": "九十九"}, 400, "no pingshui rhyme group named '九十九'"),
    ("/api/sample", {"acrostic": "春夏"}, 400, "an acrostic is 4 Han characters"),
    ("/api/sample", {"first_line": "白日依山"}, 400, "prefix line 1 '白日依山' is not 5 Han characters"),
    ("/api/sample", {"first_line": "，，"}, 400, "hold no characters"),
    ("/api/sample", {"first_line": "白日依山尽", "prefix": "白日依山尽"}, 422, "give first_line or prefix, not both"),
    ("/api/sample", {"infer_z": True}, 400, "infer_z needs first_line or prefix"),
    ("/api/sample", {"acrostic": "x" * 300}, 422, "acrostic: String should have at most"),
]


@pytest.mark.parametrize(("path", "body", "status", "fragment"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_with_one_line(client, path, body, status, fragment):
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    elif isinstance(body, str):
        response = client.post(path, content=body.encode(), headers={"content-type": "text/plain"})
    else:
        response = client.post(path, json=body)
    assert_error(response, status, fragment)
    assert client.get("/api/health").status_code == 200  # and the server keeps serving


# any JSON value where an option goes: numbers of every size and kind, strings, poems
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
    st.sampled_from([JINGYESI, DENGGUANQUE, UNKNOWN, "春夏秋冬", "白日依山尽", "七阳", "pingshui", "xinyun"]),
    st.lists(st.sampled_from([JINGYESI, "x", 1]), max_size=3),
)
OPTIONS = {
    "/api/sample": ["n", "temp", "seed", "top_k", "top_p", "beam", "rerank", "rhyme", "rhyme_group", "scheme",
                    "tones", "acrostic", "first_line", "prefix", "infer_z", "prior", "prosody_weight",
                    "bigram_correction", "nonsense"],
    "/api/vary": ["poem", "n", "spread", "temp", "seed", "beam", "acrostic", "allow_unk", "greedy",
                  "bigram_correction"],
    "/api/reconstruct": ["poems", "allow_unk"],
    "/api/interpolate": ["poem_a", "poem_b", "steps", "method", "sample", "temp", "seed", "beam", "rhyme"],
}  # fmt: skip


@st.composite
def request_body(draw) -> tuple[str, dict]:
    path = draw(st.sampled_from(sorted(OPTIONS)))
    keys = draw(st.lists(st.sampled_from(OPTIONS[path]), max_size=5, unique=True))
    return path, {k: draw(VALUES) for k in keys}


def test_no_body_ends_in_a_500(client):
    """Generated bodies: each gets 200, or a 4xx with one line of JSON; never a 500."""

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(request=request_body())
    def one(request):
        path, body = request
        content = json.dumps(body).encode()  # as Python writes JSON: NaN and Infinity included
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        if response.status_code != 200:
            assert_error(response, response.status_code)
            assert 400 <= response.status_code < 500, (path, body, response.text)

    one()


def test_allow_unk_reads_unknown_characters(client):
    assert client.post("/api/reconstruct", json={"poems": [UNKNOWN], "allow_unk": True}).status_code == 200
    assert client.post("/api/vary", json={"poem": UNKNOWN, "n": 1, "allow_unk": True}).status_code == 200


def test_a_body_over_the_limit_is_refused_unread(client):
    big = b'{"n": 1, "acrostic": "' + b"x" * 1_000_000 + b'"}'
    limit = f"over the limit of {serve.MAX_BODY:,} bytes"
    assert_error(client.post("/api/sample", content=big, headers={"content-type": "application/json"}), 413, limit)

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    assert_error(client.post("/api/sample", content=chunks(), headers={"content-type": "application/json"}), 413, limit)
    assert client.post("/api/sample", json={"n": 1}).status_code == 200


def test_unknown_paths_and_methods_are_json_too(client):
    assert_error(client.get("/api/nothing"), 404, "Not Found")
    assert_error(client.get("/api/sample"), 405, "Method Not Allowed")


def test_a_bug_is_a_500_with_one_line_not_a_traceback(poet, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nwith lines")

    monkeypatch.setattr(poet, "sample", broken)
    with TestClient(serve.create_app(poet), raise_server_exceptions=False) as client:
        assert_error(client.post("/api/sample", json={"n": 1}), 500, "internal error (RuntimeError)")
        assert client.get("/api/health").status_code == 200


# ---- the command ----------------------------------------------------------------------------
def test_serve_without_the_web_extra_says_what_to_install(monkeypatch, trained_run):
    import poetvae

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    monkeypatch.delitem(sys.modules, "poetvae.serve")  # so poetvae.serve is imported afresh
    monkeypatch.delattr(poetvae, "serve")
    with socket.socket() as taken:  # were the import to succeed, fail at once rather than serve
        taken.bind(("127.0.0.1", 0))
        result = runner.invoke(cli_app, ["serve", "-m", str(trained_run), "--port", str(taken.getsockname()[1])])
    one_line_error(result, 'pip install -e ".[web]"')


def test_serve_refuses_a_port_in_use(trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(cli_app, ["serve", "-m", str(trained_run), "--port", str(port)])
    one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_serve_refuses_a_bad_model(tmp_path):
    one_line_error(runner.invoke(cli_app, ["serve", "-m", str(tmp_path / "nothing")]), "nothing")


def test_serve_runs_until_ctrl_c(trained_run, tmp_path):
    """The command as a user runs it: loads the model, prints the URL, answers, stops on Ctrl-C."""
    server = Server.start("-m", str(trained_run), cwd=Path(tmp_path))
    try:
        assert server.first_line.startswith(f"poetvae serve: {trained_run.name} at http://127.0.0.1:")
        assert server.get("/api/health") == (200, {"status": "ok", "model": trained_run.name})
        status, body = server.post("/api/sample", {"n": 2, "seed": 1})
        assert status == 200 and len(body["poems"]) == 2
        status, body = server.post("/api/vary", {"poem": "床前明月光"})
        assert status == 400 and "expected 4 lines" in body["error"]
    finally:
        code, err = server.stop()
    assert code == 130, err  # the shell's code for a command ended by Ctrl-C
    assert "Traceback" not in err and err.strip().endswith("poetvae serve: stopped")
