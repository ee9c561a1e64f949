"""One exit-code convention for every command and output format (poetvae.cli): 0 success,
1 error, 2 usage, 130 interrupted (Ctrl-C, from the first instant), 141 stdout closed by its
reader. These run the real `poetvae` process: signals and pipes are the operating system's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import poetvae

JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
ENV = {**os.environ, "PYTHONPATH": str(Path(poetvae.__file__).parent.parent), "OMP_NUM_THREADS": "1"}


def poetvae_process(*args, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "poetvae", *map(str, args)]
    return subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sample", "-h"],
        ["sample", "-n", "2", "-f", "text"],
        ["sample", "-n", "2", "-f", "json"],
        ["vary", JING_YE_SI, "-n", "2", "-f", "oneline", "--allow-unk"],
        ["interpolate", JING_YE_SI, DENG_GUAN_QUE_LOU, "--steps", "3", "--allow-unk"],  # a rich table
        ["reconstruct", JING_YE_SI, "-f", "json", "--allow-unk"],
    ],
    ids=lambda args: " ".join(args[:3])[:30],
)
def test_a_closed_pipe_exits_141_quietly_whatever_the_command(trained_run, args):
    """The reader is gone before the first byte (`| head -0`): every command and format,
    --help included, ends with 141 and nothing on stderr."""
    model = ["-m", trained_run] if args[0] not in ("--help",) and "-h" not in args else []
    proc = poetvae_process(*args, *model, stdout=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""


# Ctrl-C the moment a module is first imported: typer (the commands are loading), torch
# (a command has begun), or None: a second and a half in, while the poems are written.
INTERRUPT_AT_IMPORT = """
import builtins, os, signal, sys
real_import, trigger = builtins.__import__, sys.argv[1]
def interrupting_import(name, *args, **kwargs):
    if name == trigger:
        builtins.__import__ = real_import
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = interrupting_import
from poetvae.cli import main
sys.argv = ["poetvae", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("at", ["typer", "torch", None])
def test_ctrl_c_is_one_line_and_130_from_the_first_instant(trained_run, at):
    """Ctrl-C while the commands load, while torch loads, or while poems are written: exit
    130 and the one line `interrupted`, never a traceback."""
    args = ["sample", "-m", str(trained_run), "-n", str(10**6), "-f", "oneline"]
    cmd = [sys.executable, "-c", INTERRUPT_AT_IMPORT, str(at), *args]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if at is None:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, stderr
    assert stderr == "interrupted\n", stderr


@pytest.mark.parametrize("args", [["--help"], ["sample", "-h"], ["sample", "--beam", "0"], ["nope"]])
def test_help_and_usage_errors_load_no_torch(args):
    code = (
        "import sys\n"
        "from poetvae.cli import main\n"
        f"sys.argv = ['poetvae', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    sys.stderr.write(f'exit {e.code} torch {\"torch\" in sys.modules}\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"exit {0 if 'help' in ' '.join(args) or args == ['sample', '-h'] else 2} torch False", proc.stderr
