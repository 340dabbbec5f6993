"""Tenant keys: the ``MEMCHAT_API_KEYS_FILE`` that maps API keys to the users they may act for.

The file (JSON, written ``0600`` and atomically by ``memchat keys``) holds, per key, its name, its users, a
random salt and ``sha256(salt + key)`` — never the key itself. The server re-reads it when it changes (its
mtime, size or inode), so ``memchat keys add`` / ``revoke`` take effect on the next request without a
restart. A key is looked up by hashing it with every entry's salt and comparing with
:func:`hmac.compare_digest`, going through all entries (no early exit). An unreadable or invalid file
accepts no tenant key (fail closed; the admin key keeps working).

Tenant sessions (the web page's ``/login`` with a tenant key) are tokens ``t1.<expiry>.<nonce>.<name hex>.<mac>``
signed with a key derived from the admin key and the entry's salt and hash: revoking or re-issuing the key ends
its sessions. Without an admin key, whoever can read the keys file could sign sessions: keep it private.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("memchat.server")

KEY_PREFIX = "mck_"
TENANT_TOKEN_PREFIX = "t1."
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class TenantKey:
    """One entry of the keys file."""

    name: str
    users: tuple[str, ...]
    salt: str
    sha256: str
    created: float = 0.0


def hash_key(key: str, salt: str) -> str:
    """The stored form of a key: ``sha256(salt + key)`` in hex."""
    return hashlib.sha256(bytes.fromhex(salt) + key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """The keys file: lookups for the server (reloaded when the file changes), edits for the CLI."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._sig: tuple[int, int, int] | None = None
        self._keys: list[TenantKey] = []

    # ---- reading --------------------------------------------------------------------------------
    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> list[TenantKey]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        out = []
        for e in data.get("keys", []):
            out.append(TenantKey(str(e["name"]), tuple(str(u) for u in e["users"]), str(e["salt"]),
                                 str(e["sha256"]), float(e.get("created") or 0)))
        return out

    def keys(self) -> list[TenantKey]:
        """The current entries (re-read when the file changed; none when it is missing or invalid)."""
        sig = self._signature()
        with self._lock:
            if sig != self._sig:
                self._sig = sig
                try:
                    self._keys = self._read() if sig is not None else []
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.error("the keys file %s is invalid (%s): no tenant key is accepted", self.path,
                              type(exc).__name__)
                    self._keys = []
            return list(self._keys)

    def match(self, key: str) -> TenantKey | None:
        """The entry of ``key`` (constant-time comparison of hashes over every entry), or ``None``."""
        found = None
        for entry in self.keys():
            if hmac.compare_digest(hash_key(key, entry.salt).encode(), entry.sha256.encode()):
                found = entry
        return found

    def get(self, name: str) -> TenantKey | None:
        """The entry named ``name``."""
        return next((k for k in self.keys() if k.name == name), None)

    # ---- editing (the CLI) --------------------------------------------------------------------
    def _write(self, keys: list[TenantKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"version": 1, "keys": [{**asdict(k), "users": list(k.users)} for k in keys]}
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entries(self) -> list[TenantKey]:
        """The entries as stored now (an invalid file raises: an edit never overwrites it)."""
        return self._read() if self.path.exists() else []

    def add(self, name: str, users: list[str]) -> str:
        """Create a key for ``users`` (the first is the default user); returns the key (shown once)."""
        from memchat.server.schemas import APIError, check_id

        if not _NAME.match(name):
            raise ValueError("a key name is 1-64 letters, digits, '_', '.', '@' or '-'")
        clean: list[str] = []
        for user in users:
            try:
                uid = check_id(user, "user")
            except APIError as exc:
                raise ValueError(f"{user!r}: {exc.message}") from exc
            if uid and uid not in clean:
                clean.append(uid)
        if not clean:
            raise ValueError("a key needs at least one user")
        current = self.entries()
        if any(k.name == name for k in current):
            raise ValueError(f"a key named {name!r} exists (revoke it first)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        self._write([*current, TenantKey(name, tuple(clean), salt, hash_key(key, salt), time.time())])
        return key

    def revoke(self, name: str) -> bool:
        """Remove the key named ``name``; False when there is none."""
        current = self.entries()
        if not any(k.name == name for k in current):
            return False
        self._write([k for k in current if k.name != name])
        return True


# ---- tenant sessions -------------------------------------------------------------------------------


def _session_mac(secret: bytes, entry: TenantKey, expires: int, nonce: str) -> str:
    signing = hmac.new(secret, f"memchat-tenant-key:{entry.salt}:{entry.sha256}".encode(), hashlib.sha256).digest()
    msg = f"memchat-tenant-session:{expires}:{nonce}:{entry.name}".encode()
    return hmac.new(signing, msg, hashlib.sha256).hexdigest()


def tenant_session(secret: bytes, entry: TenantKey, ttl: int, now: float | None = None) -> str:
    """A signed session token for the tenant key ``entry``."""
    expires = int((time.time() if now is None else now) + ttl)
    nonce = secrets.token_hex(8)
    mac = _session_mac(secret, entry, expires, nonce)
    return f"{TENANT_TOKEN_PREFIX}{expires}.{nonce}.{entry.name.encode().hex()}.{mac}"


def tenant_of_session(secret: bytes, store: KeyStore, value: str, now: float | None = None) -> TenantKey | None:
    """The tenant key of a valid, unexpired tenant session token (``None`` otherwise)."""
    parts = value[len(TENANT_TOKEN_PREFIX):].split(".") if value.startswith(TENANT_TOKEN_PREFIX) else []
    if len(parts) != 4 or not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 12):
        return None
    try:
        name = bytes.fromhex(parts[2]).decode()
    except ValueError:
        return None
    entry = store.get(name)
    expires = int(parts[0])
    if entry is None or expires <= (time.time() if now is None else now):
        return None
    ok = hmac.compare_digest(parts[3].encode(), _session_mac(secret, entry, expires, parts[1]).encode())
    return entry if ok else None


def describe(entry: TenantKey) -> dict[str, Any]:
    """What ``memchat keys list`` shows (no hash, no salt)."""
    return {"name": entry.name, "users": list(entry.users),
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.created)) if entry.created else ""}
