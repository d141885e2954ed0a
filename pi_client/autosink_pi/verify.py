"""Signature checks for fleet releases: the one implementation, used on devices and by the platform.

A manifest is signed over its exact bytes (``manifest.json.sig``, base64 Ed25519); a channel
pointer over the canonical JSON of its fields (the ``signature`` field inside the pointer).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class SignatureError(ValueError):
    """A signature is missing, malformed or does not verify."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models can be large for a Pi)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_public_key(data) -> Ed25519PublicKey:
    """From PEM bytes or a PEM file path."""
    raw = data if isinstance(data, bytes) else Path(data).expanduser().read_bytes()
    key = serialization.load_pem_public_key(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("not an Ed25519 public key")
    return key


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def verify(public: Ed25519PublicKey, data: bytes, signature: str) -> None:
    try:
        public.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError) as e:
        raise SignatureError("signature does not verify with the configured public key") from e


def verify_pointer(public: Ed25519PublicKey, pointer: dict) -> dict:
    """The pointer's fields if its embedded signature verifies; SignatureError otherwise."""
    if not isinstance(pointer, dict) or "signature" not in pointer:
        raise SignatureError("channel pointer is not signed")
    body = {k: v for k, v in pointer.items() if k != "signature"}
    verify(public, canonical(body), pointer["signature"])
    return body
