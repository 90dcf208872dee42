"""Job tokens: HKDF against RFC 5869, key derivation, token files, and a real CURVE handshake."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from numpy_cnn.distributed.keys import SERVER, WORKER, Keys, allow_only
from numpy_cnn.distributed.token import (
    ENV,
    LABELS,
    MIN_CHARS,
    SALT,
    TokenError,
    derive_keys,
    hkdf_sha256,
    keys_from_token,
    new_token,
    read_token,
)

TOKEN = "x2BfG0m6m8vQp1H3s8Zk4Yw7Jd5Lr9Tc0Ae2Nq6Uo4I"


# --- HKDF and the keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ikm, salt, info, length, okm",
    [  # RFC 5869, appendix A: test cases 1 and 3 (SHA-256, with and without salt and info)
        (
            bytes([0x0B] * 22),
            bytes(range(13)),
            bytes(range(0xF0, 0xFA)),
            42,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        ),
        (
            bytes([0x0B] * 22),
            b"",
            b"",
            42,
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        ),
    ],
)
def test_hkdf_matches_rfc_5869(ikm: bytes, salt: bytes, info: bytes, length: int, okm: str) -> None:
    assert hkdf_sha256(ikm, salt, info, length).hex() == okm


def test_keys_are_hkdf_of_the_token_with_one_label_per_role() -> None:
    (server_public, server_secret), (worker_public, worker_secret) = derive_keys(TOKEN)
    for public, secret, role in (
        (server_public, server_secret, SERVER),
        (worker_public, worker_secret, WORKER),
    ):
        assert secret == z85.encode(hkdf_sha256(TOKEN.encode(), SALT, LABELS[role], 32))
        assert public == zmq.curve_public(secret) and len(public) == len(secret) == 40
    assert server_secret != worker_secret and server_public != worker_public


def test_keys_are_the_same_for_the_same_token_and_differ_for_another() -> None:
    assert derive_keys(TOKEN) == derive_keys(TOKEN) == derive_keys(f"  {TOKEN}\n")  # a file's newline
    other = derive_keys(new_token())
    assert set(derive_keys(TOKEN)[0] + derive_keys(TOKEN)[1]).isdisjoint(other[0] + other[1])


def test_keys_from_token_have_the_shape_keys_read_gives() -> None:
    server, worker = keys_from_token(TOKEN, SERVER), keys_from_token(TOKEN, WORKER)
    assert isinstance(server, Keys) and isinstance(worker, Keys)
    assert server.peer_public == worker.public and worker.peer_public == server.public
    assert (server.public, server.secret) == derive_keys(TOKEN)[0]
    assert server.secret.decode() not in repr(server)
    with pytest.raises(ValueError, match="'client'"):
        keys_from_token(TOKEN, "client")


def test_new_token() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:  # 32 bytes, URL-safe base64 without padding
        assert len(token) == 43 >= MIN_CHARS and set(token) <= set(
            string.ascii_letters + string.digits + "-_"
        )


@pytest.mark.parametrize(
    "token, words",
    [("", ["empty"]), ("   \n", ["empty"]), ("short-secret", ["12 characters", f"at least {MIN_CHARS}"])],
)
def test_empty_or_short_tokens_are_refused(token: str, words: list[str]) -> None:
    for call in (lambda: derive_keys(token), lambda: read_token({ENV: token})):
        with pytest.raises(TokenError) as e:
            call()
        assert all(word in str(e.value) for word in words)
        if token.strip():
            assert token not in str(e.value)  # a secret never goes into a message


# --- reading a token -----------------------------------------------------------------------------


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_read_token_from_the_variable_or_a_private_file(tmp_path: Path) -> None:
    assert read_token({ENV: TOKEN + "\n"}) == TOKEN
    other = new_token()
    path = write(tmp_path / "token", other + "\n", 0o600)
    assert read_token({}, path) == other
    assert read_token({ENV: TOKEN}, str(path)) == other  # the flag beats the variable
    assert read_token({}, write(tmp_path / "read-only", other, 0o400)) == other


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_token_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "token", TOKEN, mode)
    with pytest.raises(TokenError) as e:
        read_token({ENV: TOKEN}, path)
    assert str(path) in str(e.value) and f"{mode:#o}" in str(e.value) and "chmod 600" in str(e.value)
    assert TOKEN not in str(e.value)


def test_token_file_errors(tmp_path: Path) -> None:
    cases = [
        (tmp_path / "missing", ["cannot open token file", "missing"]),
        (tmp_path, ["not a regular file"]),
        (write(tmp_path / "empty", "\n", 0o600), ["is empty"]),
        (write(tmp_path / "big", "x" * 5000, 0o600), ["longer than 4096 bytes"]),
        (write(tmp_path / "short", "abc", 0o600), ["3 characters"]),
        (tmp_path / "fifo", ["not a regular file"]),  # refused at once, not waited on
    ]
    os.mkfifo(tmp_path / "fifo", 0o600)
    (tmp_path / "binary").write_bytes(b"\xff" * 40)
    (tmp_path / "binary").chmod(0o600)
    cases.append((tmp_path / "binary", ["not text"]))
    os.chmod(tmp_path, 0o700)
    for path, words in cases:
        with pytest.raises(TokenError) as e:
            read_token({}, path)
        assert all(word in str(e.value) for word in words) and str(path) in str(e.value), str(e.value)
    with pytest.raises(TokenError, match=f"set {ENV} or pass --token-file"):
        read_token({})


# --- a real handshake -----------------------------------------------------------------------------


def test_curve_handshake_succeeds_with_the_same_token_only() -> None:
    """A ROUTER with the server's keys admits a DEALER with the same token's worker keys, no other."""
    server_keys = keys_from_token(TOKEN, SERVER)
    stranger = keys_from_token(new_token(), WORKER)
    context = zmq.Context()
    auth = allow_only(context, server_keys.peer_public)  # the job's own ZAP handler
    sockets = []

    def socket(kind: int, keys: Keys) -> zmq.Socket:
        s = context.socket(kind)
        sockets.append(s)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_secretkey, s.curve_publickey = keys.secret, keys.public
        return s

    def hello(keys: Keys, endpoint: str, text: bytes) -> zmq.Socket:
        dealer = socket(zmq.DEALER, keys)
        dealer.curve_serverkey = keys.peer_public
        dealer.setsockopt(zmq.SNDTIMEO, 1000)
        dealer.connect(endpoint)
        dealer.send(text)  # queued until a handshake succeeds, or forever
        return dealer

    try:
        router = socket(zmq.ROUTER, server_keys)
        router.curve_server = True
        router.bind("tcp://127.0.0.1:*")
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        # another token's worker: it expects another server key, so it refuses this server
        hello(stranger, endpoint, b"stranger")
        # another token's worker that knows this server's public key: the ZAP handler refuses it
        hello(Keys(stranger.public, stranger.secret, server_keys.public), endpoint, b"impostor")
        assert router.poll(1000) == 0, "a worker with another token got through"
        # same token: the handshake completes and messages go both ways
        worker = hello(keys_from_token(TOKEN, WORKER), endpoint, b"hello")
        assert router.poll(5000) == zmq.POLLIN
        peer, text = router.recv_multipart()
        assert text == b"hello"
        router.send_multipart([peer, b"welcome"])
        assert worker.poll(5000) == zmq.POLLIN and worker.recv() == b"welcome"
        assert router.poll(200) == 0  # and still nothing from the other two
    finally:
        for s in sockets:
            s.close()
        auth.stop()
        context.term()
