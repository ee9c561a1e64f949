"""Shared test helpers (not a test file): the tiny config every training test uses, the
well-formedness check of decoded token rows, and `poetvae serve` run as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch

from poetvae.config import Config, ModelConfig, PrepConfig, TrainConfig
from poetvae.vocab import EOS, PAD, Vocab

# Small enough that a CPU trains it in a second or two, big enough to exercise every part.
TINY = Config(
    prep=PrepConfig(min_count=1, w2v_epochs=1, valid_fraction=0.1, test_fraction=0.1),
    model=ModelConfig(embed_dim=16, highway_layers=1, hidden_dim=24, latent_dim=6, dropout=0.1),
    train=TrainConfig(epochs=2, batch_size=16, log_every=1, seed=0, kl_schedule="linear", kl_warmup_steps=5),
)


def _model_flags(config: Config) -> list[str]:
    m, tr = config.model, config.train
    return ["--embed-dim", str(m.embed_dim), "--hidden-dim", str(m.hidden_dim), "--latent-dim", str(m.latent_dim),
            "--highway-layers", str(m.highway_layers), "--batch-size", str(tr.batch_size)]  # fmt: skip


# TINY's model and batch size as command-line flags, for the tests that train through the CLI
TINY_MODEL_FLAGS = _model_flags(TINY)


def tiny(**train_overrides) -> Config:
    """TINY with some train settings changed."""
    return dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, **train_overrides))


def assert_well_formed(vocab: Vocab, ids: torch.Tensor) -> None:
    chars = vocab.token_chars()
    for row in ids.tolist():
        lines = vocab.decode(row)
        assert len(lines) == 4 and all(len(line) == 5 for line in lines), lines
        assert all("\u4e00" <= ch <= "\u9fff" for line in lines for ch in line), lines
        n = row.index(EOS)
        assert sum(chars[i].item() for i in row[:n]) == 20
        assert all(i >= 4 for i in row[:n])  # no special token inside the poem
        assert all(i == PAD for i in row[n + 1 :])
        # word tokens never cross a line break
        pos = 0
        for i in row[:n]:
            assert pos // 5 == (pos + chars[i].item() - 1) // 5
            pos += chars[i].item()


def one_line_error(result, fragment: str) -> str:
    """A CLI result that failed with exit code 1 and one line `error: ...` naming `fragment`
    (no traceback); the line, for further checks."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0], lines[0]
    return lines[0]


class Server:
    """`poetvae serve ARGS --port 0` in a subprocess (a free loopback port, no race for one):
    started by `Server.start`, the URL read from its startup line; `stop` sends Ctrl-C."""

    def __init__(self, proc: subprocess.Popen, url: str, first_line: str):
        self.proc, self.url, self.first_line = proc, url, first_line

    @classmethod
    def start(cls, *args: str, cwd: Path, timeout: float = 120) -> Server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "poetvae", "serve", *args, "--port", "0"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=timeout)  # the model loads first, then the line
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"poetvae serve printed nothing in {timeout} s: {proc.stderr.read()}") from None
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found is None:
            proc.kill()
            raise AssertionError(f"no URL in the startup line {line!r}: {proc.communicate()[1]}")
        return cls(proc, found.group(0), line)

    def get(self, path: str) -> tuple[int, dict]:
        return self.request(path)

    def post(self, path: str, body: object) -> tuple[int, dict]:
        return self.request(path, json.dumps(body).encode())

    def request(self, path: str, data: bytes | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a user stops it: (exit code, what it wrote on stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read()  # stdout: drained by the reader thread
