"""CURVE keys: who may talk to a job's server, and how the keys are made, written and read.

A job has two key pairs. The server's proves to the workers that they reach the real server;
the workers' (one pair, shared by every worker) is the only client key the server lets in. The
files are ZeroMQ's certificate format (`zmq.auth`): NAME.key holds a public key, NAME.key_secret
the pair. `launch` writes a fresh set per local job into a private temporary folder;
`launch keygen DIR` writes one for jobs that span machines.
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

SERVER, WORKER = "server", "worker"
FILES = (f"{SERVER}.key", f"{SERVER}.key_secret", f"{WORKER}.key", f"{WORKER}.key_secret")
# what each side reads; the other files can stay off its machine
NEEDS = {SERVER: (f"{SERVER}.key_secret", f"{WORKER}.key"), WORKER: (f"{WORKER}.key_secret", f"{SERVER}.key")}


class KeyFileError(ValueError):
    """Key files that are missing or unreadable."""


@dataclass(frozen=True)
class Keys:
    """The keys one side holds: its own pair, and the other side's public key (all Z85 bytes)."""

    public: bytes
    secret: bytes
    peer_public: bytes

    def __repr__(self) -> str:  # never print a secret key
        return f"Keys(public={self.public.decode()}, peer_public={self.peer_public.decode()})"


def write(directory: str | os.PathLike) -> Path:
    """Write a fresh server pair and worker pair into `directory` (created; never overwrites)."""
    folder = Path(directory)
    existing = [name for name in FILES if (folder / name).exists()]
    if existing:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)}")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    umask = os.umask(0o077)  # the secret files are never readable by others, not even briefly
    try:
        for role in (SERVER, WORKER):
            zmq.auth.create_certificates(folder, role)
    finally:
        os.umask(umask)
    return folder


def read(directory: str | os.PathLike, role: str) -> Keys:
    """The keys `role` (SERVER or WORKER) needs, from the files `write` made."""
    folder = Path(directory)
    own, other = NEEDS[role]
    try:
        public, secret = zmq.auth.load_certificate(folder / own)
        peer_public, _ = zmq.auth.load_certificate(folder / other)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the {role}'s keys from {folder}: {e}") from None
    if not secret:
        raise KeyFileError(f"{folder / own} holds no secret key")
    return Keys(public, secret, peer_public)


class TemporaryKeys:
    """A fresh key set in a private temporary folder, removed on exit: one local job's keys."""

    def __enter__(self) -> Path:
        self.folder = Path(tempfile.mkdtemp(prefix="numpy-cnn-keys-"))  # mode 0700
        return write(self.folder)

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def allow_only(context: zmq.Context, client_public: bytes):
    """Start a ZAP authenticator on `context` that admits CURVE clients with this key only."""
    from zmq.auth.thread import ThreadAuthenticator

    class OneKey:
        def callback(self, domain: str, key: bytes) -> bool:
            return hmac.compare_digest(key, client_public)

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=OneKey())
    return auth
