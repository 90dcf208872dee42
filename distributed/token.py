"""A job token instead of key files: every node derives the job's CURVE keys from one shared secret.

`new_token()` makes the token; each node reads it from NUMPY_CNN_TOKEN or from a file only its
owner can read (--token-file). The server's and the workers' key pairs both come from it by
HKDF-SHA256 (RFC 5869), each with its own label. HKDF, not a slow password hash such as PBKDF2:
a token is 256 random bits, so there is nothing to stretch, and HKDF's labels give independent
keys for the two roles from one secret. HKDF is two HMACs, so the standard library suffices.

What a token gives up, next to `launch keygen`'s files: whoever holds it holds both pairs. It
keeps out anyone without it and encrypts every connection, but a worker's machine could pose
as the server. Never print a token; the errors here don't.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping

import zmq
from zmq.utils import z85

from .keys import SERVER, WORKER, Keys

ENV = "NUMPY_CNN_TOKEN"
MIN_CHARS = 32  # new_token() gives 43; a KDF cannot add entropy a short token lacks
MAX_FILE_BYTES = 4096  # a token file is one line; anything longer is the wrong file
SALT = b"numpy_cnn job token v1"  # a new version, a new salt: old tokens then give other keys
LABELS = {
    SERVER: b"numpy_cnn server curve25519 secret key",
    WORKER: b"numpy_cnn worker curve25519 secret key",
}


class TokenError(ValueError):
    """A job token that is missing, too short, or kept in a file others can read."""


def new_token() -> str:
    """A fresh job token: 32 random bytes from the OS as URL-safe base64, 43 characters, no padding."""
    return secrets.token_urlsafe(32)


def read_token(env: Mapping[str, str], token_file: str | os.PathLike | None = None) -> str:
    """The job's token from `token_file` (--token-file beats the variable), else from NUMPY_CNN_TOKEN."""
    if token_file is not None:
        return check(_read_private(os.fspath(token_file)), f"token file {os.fspath(token_file)}")
    if ENV in env:
        return check(env[ENV], ENV)
    raise TokenError(f"no job token: set {ENV} or pass --token-file (make one with `launch token`)")


def check(token: str, where: str = "") -> str:
    """`token` without surrounding white space, if it is long enough to be a job's only secret."""
    token, named = token.strip(), f"the job token from {where}" if where else "the job token"
    if not token:
        raise TokenError(f"{named} is empty")
    if len(token) < MIN_CHARS:
        raise TokenError(
            f"{named} is {len(token)} characters long; it needs at least {MIN_CHARS} "
            f"(new_token() makes {len(new_token())})"
        )
    return token


def derive_keys(token: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """(server (public, secret), worker (public, secret)) as Z85 bytes, the same for the same token."""
    prk = _extract(check(token).encode())
    pairs = []
    for role in (SERVER, WORKER):
        # any 32 bytes are a Curve25519 secret key: the curve clamps the bits it needs
        secret = z85.encode(_expand(prk, LABELS[role], 32))
        pairs.append((zmq.curve_public(secret), secret))
    return pairs[0], pairs[1]


def keys_from_token(token: str, role: str) -> Keys:
    """The keys `role` (SERVER or WORKER) holds, as `keys.read` would give them from key files."""
    server, worker = derive_keys(token)
    if role == SERVER:
        return Keys(*server, peer_public=worker[0])
    if role == WORKER:
        return Keys(*worker, peer_public=server[0])
    raise ValueError(f"role {role!r} is neither {SERVER!r} nor {WORKER!r}")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869's HKDF with SHA-256: `length` bytes of key from input key material `ikm`."""
    return _expand(_extract(ikm, salt), info, length)


def _extract(ikm: bytes, salt: bytes = SALT) -> bytes:
    # RFC 5869's "no salt" is 32 zero bytes, which HMAC's zero padding makes the same as b""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 gives 1 to {255 * 32} bytes, not {length}")
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


def _read_private(path: str) -> str:
    """The text of `path`, refused unless it is a regular file that only its owner may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO must not hang us here
    except OSError as e:
        raise TokenError(f"cannot open token file {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)  # of the file opened, not of whatever the name points to by now
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"token file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise TokenError(
                f"token file {path} has mode {mode:#o}: others may read it; run chmod 600 {path}"
            )
        data = b""
        while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise TokenError(f"token file {path} is longer than {MAX_FILE_BYTES} bytes: not a token")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise TokenError(f"token file {path} is not text") from None
