"""API keys: ``ck_<prefix>_<secret>``, shown once, stored only as a SHA-256 hash beside the visible prefix.

The secret has 256 bits of entropy, so a fast hash is safe here (unlike passwords) and lets every request
look its key up by hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"^ck_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    token: str  # give this to the person, once
    prefix: str
    key_hash: str


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_key() -> NewKey:
    prefix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    token = f"ck_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(token=token, prefix=prefix, key_hash=hash_key(token))


def looks_like_key(token: str) -> bool:
    return KEY_PATTERN.match(token) is not None
