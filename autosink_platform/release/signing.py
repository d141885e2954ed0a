"""Ed25519 keys for the fleet channel (``cryptography``).

Two keys, both outside the repository, the lake and MLflow:

- the **online key** signs the channel's TUF targets, snapshot and timestamp on every publish:
  ``~/.config/autosink/fleet-signing-key.pem`` (mode 0600), or wherever ``AUTOSINK_SIGNING_KEY``
  points;
- the **root key** signs TUF root: which keys devices trust. It is needed to create the channel,
  rotate the online key and renew root, nothing else, so it belongs offline:
  ``fleet-root-key.pem`` beside the online key, or ``AUTOSINK_ROOT_KEY``.

Devices are provisioned with the channel's ``metadata/root.json``; they never take keys from the
channel, only roots that the root they trust has signed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "DEFAULT_KEY",
    "KeyFileError",
    "ensure_keypair",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_pem",
    "root_key_path",
]


class KeyFileError(ValueError):
    """A key file holds something other than the Ed25519 key expected."""


DEFAULT_KEY = Path("~/.config/autosink/fleet-signing-key.pem")
ROOT_KEY_NAME = "fleet-root-key.pem"


def root_key_path(signing_key: str | Path, root_key: str | Path | None = None) -> Path:
    """The root key: ``root_key`` when given, else ``fleet-root-key.pem`` beside the online key."""
    return Path(root_key).expanduser() if root_key else Path(signing_key).expanduser().with_name(ROOT_KEY_NAME)


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write a new key pair; the private key with mode 0600. Refuses to overwrite a key.

    The private key appears whole or not at all: it is written to a temporary file and hard-linked
    into place, and the link fails if another process got there first (``FileExistsError``), so two
    workers creating the default key at once cannot leave a half-written or mismatched pair."""
    private_path = Path(private_path).expanduser()
    public_path = Path(public_path).expanduser() if public_path else private_path.with_suffix(".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} exists: refusing to replace a signing key")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_private = private_path.with_name(f".{private_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp_public = public_path.with_name(f".{public_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp_private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        tmp_public.write_bytes(public_pem(key.public_key()))
        try:
            os.link(tmp_private, private_path)
        except FileExistsError:
            raise FileExistsError(f"{private_path} exists: refusing to replace a signing key") from None
        os.replace(tmp_public, public_path)
    finally:
        tmp_private.unlink(missing_ok=True)
        tmp_public.unlink(missing_ok=True)
    return private_path, public_path


def ensure_keypair(private_path: str | Path) -> Path:
    """The key at ``private_path``, created if missing. Safe when several processes (Celery workers,
    parallel steps) ask at once: whoever links first wins and the others use that key."""
    private_path = Path(private_path).expanduser()
    if not private_path.exists():
        try:
            generate_keypair(private_path)
        except FileExistsError:
            if not private_path.exists():  # the public half exists without its private key: not ours to fix
                raise
    return private_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).expanduser().read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint that names the key in manifests and pointers."""
    return hashlib.sha256(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()[
        :16
    ]


def load_public_key(data) -> Ed25519PublicKey:
    """From PEM bytes or a PEM file path."""
    raw = data if isinstance(data, bytes) else Path(data).expanduser().read_bytes()
    key = serialization.load_pem_public_key(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key")
    return key
