"""Stable session-level splits and content-hash snapshot ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitConfig:
    validation: float = 0.2
    test: float = 0.2
    salt: str = "v1"  # change it to reshuffle every session deliberately; nothing else moves sessions

    def __post_init__(self):
        if not (0 < self.validation and 0 < self.test and self.validation + self.test < 1):
            raise ValueError(f"split fractions must be positive and sum below 1: {self}")


def assign_split(session_id: str, cfg: SplitConfig = SplitConfig()) -> str:
    """A pure function of the id and config, so adding sessions never moves old ones."""
    u = int.from_bytes(hashlib.sha256(f"{cfg.salt}:{session_id}".encode()).digest()[:8], "big") / 2**64
    if u < cfg.validation:
        return "validation"
    if u < cfg.validation + cfg.test:
        return "test"
    return "train"


def snapshot_id(*parts: str) -> str:
    """Content-hash id of a dataset from the strings that determine it (order-sensitive)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]
