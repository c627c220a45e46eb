"""A real lockd for the tests: the binary the workspace builds (or LOCKD_BIN)."""

import os
import pathlib
import re
import subprocess
import time

import pytest

KEY = "python-test-key"
ROOT = pathlib.Path(__file__).resolve().parents[3]


def lockd_bin() -> str:
    b = os.environ.get("LOCKD_BIN") or str(ROOT / "target" / "debug" / "lockd")
    if not os.path.exists(b):
        pytest.fail(f"no lockd binary at {b}: run `cargo build -p lockd` (or set LOCKD_BIN)")
    return b


@pytest.fixture
def server():
    """A lockd on a free port with a 1 s grace; yields its address."""
    p = subprocess.Popen(
        [lockd_bin(), "--port", "0", "--auth-key", KEY, "--lock-timeout", "1"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    addr = None
    deadline = time.time() + 10
    while time.time() < deadline:
        line = p.stderr.readline()
        m = re.search(r"lockd listening address=(\S+)", line)
        if m:
            addr = m.group(1)
            break
    assert addr, "lockd did not start"
    yield addr
    p.terminate()
    p.wait(10)
