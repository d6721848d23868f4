"""CURVE key pairs for the link: `o2o-keys generate NAME --out DIR`, loading them, and noticing
the handshakes a wrong key makes fail.

The files are the ZPL certificates pyzmq's `zmq.auth` reads and writes: `NAME.key` holds the
public key (safe to copy: the robot gets the trainer's, the trainer's allow-list directory gets
each robot's), `NAME.key_secret` holds both keys and stays on its machine (mode 0600).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A socket monitor for these events reports handshakes refused by a key (or a missing one).
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class KeyFileError(Exception):
    """A key file is missing or is not a certificate of the expected kind."""


def generate(name: str, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create `out/NAME.key` and `out/NAME.key_secret`; refuses to overwrite either."""
    if not _NAME.match(name):
        raise KeyFileError(f"key name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    out = Path(out)
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} already exists; remove it or choose another name")
    out.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(out, name)
    secret.chmod(0o600)
    return public, secret


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The public key in a `.key` (or `.key_secret`) file."""
    return _load(path)[0]


def load_keypair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a `.key_secret` file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path}: holds no secret key; pass the NAME.key_secret file")
    return public, secret


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    if not Path(path).is_file():
        raise KeyFileError(f"{path}: no such key file (create one with `o2o-keys generate NAME --out DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError, IndexError) as exc:
        raise KeyFileError(f"{path}: not a CURVE certificate ({exc})") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path}: not a CURVE certificate (no public key)")
    return public, secret


def failed_handshakes(monitor: zmq.Socket) -> list[str]:
    """Drain a socket monitor (made with `HANDSHAKE_FAILED`): the endpoints of failed handshakes."""
    endpoints = []
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return endpoints
        if event["event"] & HANDSHAKE_FAILED:
            endpoints.append(event["endpoint"].decode(errors="replace"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="o2o-keys", description="CURVE key pairs for the robot <-> trainer link.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="create NAME.key (public) and NAME.key_secret in DIR")
    gen.add_argument("name", help="e.g. trainer, or the robot id")
    gen.add_argument("--out", required=True, help="directory for the two files")
    args = parser.parse_args(argv)
    if not zmq.has("curve"):
        print("o2o-keys: this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    try:
        public, secret = generate(args.name, args.out)
    except (KeyFileError, OSError) as exc:
        print(f"o2o-keys: {exc}", file=sys.stderr)
        return 1
    print(f"public key: {public}  (copy to the peer)")
    print(f"secret key: {secret}  (keep on this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
