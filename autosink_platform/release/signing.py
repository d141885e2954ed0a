"""Ed25519 signatures for fleet releases (``cryptography``).

The private key lives outside the repository, the lake and MLflow: by default in
``~/.config/autosink/fleet-signing-key.pem`` (mode 0600), or wherever ``AUTOSINK_SIGNING_KEY``
points. Devices hold the public key from provisioning; they never take it from the channel.

What is signed:
  - ``manifest.json``: its exact bytes, signature in ``manifest.json.sig`` (base64);
  - a channel pointer: the canonical JSON of its fields, signature inside the pointer file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from autosink_pi.verify import SignatureError, canonical, load_public_key, verify, verify_pointer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [  # verification is the device package's, so the platform checks exactly what devices check
    "SignatureError",
    "canonical",
    "DEFAULT_KEY",
    "ensure_keypair",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_pem",
    "sign",
    "sign_pointer",
    "verify",
    "verify_pointer",
]

DEFAULT_KEY = Path("~/.config/autosink/fleet-signing-key.pem")


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
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint that names the key in manifests and pointers."""
    return hashlib.sha256(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()[
        :16
    ]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def sign_pointer(key: Ed25519PrivateKey, pointer: dict) -> dict:
    body = {k: v for k, v in pointer.items() if k != "signature"}
    return body | {"signature": sign(key, canonical(body))}
