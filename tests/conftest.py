"""Shared test fixtures. Nothing in the suite may open a network connection: any attempt fails the test."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (sets the offline environment before any library import)

# Real files live beside the project (../shared/real), never inside it; CXR_REAL_DATA overrides.
REAL = Path(os.environ.get("CXR_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "real"))


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else ""
    return host in ("localhost", "::1", "", None, b"localhost") or str(host).startswith("127.")


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail on any connection to a non-loopback address (ultralytics, torchvision, HF, pip...)."""
    attempts: list = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guard(sock, address):
        if not _is_local(address):
            attempts.append(address)
            raise NetworkAttempt(f"test tried to open a network connection to {address!r}")

    def connect(self, address):
        guard(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(self, address)
        return real_connect_ex(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local((host,)):
            attempts.append(host)
            raise NetworkAttempt(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"network connections attempted: {attempts}"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real data folder not found at {REAL}")
    return REAL


@pytest.fixture(scope="module")
def one_torch_thread():
    """DenseNet-121 on tiny images is many small ops: one thread is as fast on an idle 2-core machine
    and about 3x faster when other processes compete for the cores (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
