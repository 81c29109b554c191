"""Bearer tokens with roles (ingest, read, admin), stored as hashes in DATA/tokens.json."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from mohlog import log
from mohlog.errors import (
    Conflict,
    CorruptData,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
)

ROLES = ("ingest", "read", "admin")
PREFIX = "mohlog_"


@dataclass
class Token:
    id: str
    name: str
    role: str
    hash: str
    created: int

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("hash")
        return d


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "tokens.json"
        self.admin_file = data_dir / "admin.token"
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._by_hash: dict[str, Token] = {}
        self._load()

    def _load(self) -> None:
        """The tokens of the file (replacing those known only once it reads well)."""
        mtime = self.path.stat().st_mtime_ns if self.path.exists() else 0
        self._tokens = self._read() if self.path.exists() else {}
        self._mtime = mtime
        self._by_hash = {t.hash: t for t in self._tokens.values()}

    def _read(self) -> dict[str, Token]:
        try:
            data = orjson.loads(self.path.read_bytes())
            return {t.id: t for t in (Token(**x) for x in data["tokens"])}
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise CorruptData(f"{self.path} is damaged ({err}): fix it, or move it away "
                              "(the hub then writes a new admin token; other tokens must "
                              "be made again)") from err

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"tokens": [asdict(t) for t in self._tokens.values()]},
                                 option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime_ns
        self._by_hash = {t.hash: t for t in self._tokens.values()}

    def ensure_admin(self) -> Path:
        """On first start: create an admin token and write it to DATA/admin.token (0600)."""
        if self.admin_file.exists() and self.check(self.admin_file.read_text().strip()):
            return self.admin_file
        secret = self.create("admin", "admin (first start)")["token"]
        fd = os.open(self.admin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.chmod(self.admin_file, 0o600)
        return self.admin_file

    def create(self, role: str, name: str = "", secret: str | None = None) -> dict[str, Any]:
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}", valid=list(ROLES))
        if secret is not None and (not isinstance(secret, str) or len(secret) < 24
                                   or not secret.isprintable()):
            raise InvalidInput("a given token value must be at least 24 printable characters")
        secret = secret or PREFIX + secrets.token_urlsafe(32)
        tok = Token(secrets.token_hex(6), name or role, role, _hash(secret), time.time_ns())
        with self._lock:
            if tok.hash in self._by_hash:
                raise InvalidInput("that token value is already registered")
            self._tokens[tok.id] = tok
            self._save()
        log.hub.info("token %s created (role %s, name %s)", tok.id, role, tok.name)
        return {**tok.public(), "token": secret}

    def _changed_on_disk(self) -> bool:
        """Tokens created by another process (mohlog run, an operator's script)."""
        try:
            return self.path.stat().st_mtime_ns != self._mtime
        except OSError:
            return False

    def list(self) -> list[dict[str, Any]]:
        return [t.public() for t in self._tokens.values()]

    def revoke(self, ident: str) -> dict[str, Any]:
        with self._lock:
            tok = self._tokens.get(ident) or next(
                (t for t in self._tokens.values() if t.name == ident), None)
            if tok is None:
                raise NotFound(f"no token {ident!r}",
                               valid=sorted({t.id for t in self._tokens.values()}
                                            | {t.name for t in self._tokens.values()}))
            if tok.role == "admin" and not any(t.role == "admin" and t.id != tok.id
                                               for t in self._tokens.values()):
                raise Conflict(f"token {tok.id} is the last admin token: create another "
                               "(mohlog token create --role admin) before revoking it")
            del self._tokens[tok.id]
            self._save()
        log.hub.info("token %s revoked", tok.id)
        return tok.public()

    def check(self, secret: str) -> Token | None:
        h = _hash(secret)
        tok = self._by_hash.get(h)
        if tok is None and self._changed_on_disk():
            with self._lock:
                try:
                    self._load()
                except CorruptData as err:      # keep the tokens known: log, not lock out
                    log.hub.error("%s; the tokens known before are kept", err.message)
                    with contextlib.suppress(OSError):      # (said once per change)
                        self._mtime = self.path.stat().st_mtime_ns
            tok = self._by_hash.get(h)
        return tok if tok is not None and hmac.compare_digest(tok.hash, h) else None

    def authorize(self, header: str | None, need: str) -> Token:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        tok = self.check(header[7:].strip())
        if tok is None:
            raise Unauthorized("invalid or revoked token")
        if tok.role != "admin" and tok.role != need:
            raise Forbidden(f"token role {tok.role!r} may not do this; needs {need!r}",
                            role=tok.role, needs=need)
        return tok


def required_role(method: str, path: str) -> str | None:
    """The role a request needs; None for open endpoints."""
    if path in ("/healthz", "/", "/favicon.ico") or path.startswith("/static/"):
        return None
    if path.startswith("/api/v1/tokens") or path.startswith("/api/v1/admin"):
        return "admin"
    if method == "POST" and (path.startswith("/api/v1/archive") or path == "/api/v1/retention"):
        return "admin"
    if method == "POST" and path == "/api/v1/logs":
        return "ingest"
    return "read"
