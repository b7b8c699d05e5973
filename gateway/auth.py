"""API keys, roles and the ``pii`` scope.

A key is a random secret the caller sends as ``Authorization: Bearer <key>`` (the
auditor's page sends it in a cookie). The gateway stores only each key's SHA-256,
with the key's id, roles and scopes, one key per entry::

    <key id>:<sha256 of the key, hex>:<role>[+<role>...][:<scope>[+<scope>...]]

Keys are long random strings, so a plain SHA-256 is enough to keep them out of
configuration and logs; a presented key is hashed and compared, in constant time,
with every configured hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from typing import Any, Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.types import ASGIApp

from gateway.observability import stage

Role = Literal["scorer", "feature_writer", "auditor", "operator", "admin"]
ROLES: tuple[Role, ...] = ("scorer", "feature_writer", "auditor", "operator", "admin")
SCOPES = frozenset({"pii"})
COOKIE = "scoregate_key"
AUTH_DONE = "scoregate.auth_done_ns"
ROLE_OPT = "scoregate_role"


class KeyConfigError(ValueError):
    """A key entry is malformed; the message says which entry and what."""


class ApiKey(msgspec.Struct, frozen=True):
    """A configured key: its id, the SHA-256 of its secret, its roles and scopes."""

    key_id: str
    sha256: str
    roles: frozenset[str]
    scopes: frozenset[str] = frozenset()

    def line(self) -> str:
        """The entry that configures this key."""
        line = f"{self.key_id}:{self.sha256}:{'+'.join(sorted(self.roles))}"
        return f"{line}:{'+'.join(sorted(self.scopes))}" if self.scopes else line


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the key's id, roles and scopes.

    ``admin`` holds every role and the ``pii`` scope.
    """

    key_id: str
    roles: frozenset[str]
    scopes: frozenset[str]

    def has(self, role: Role) -> bool:
        """True when the key holds ``role`` (or is an admin key)."""
        return role in self.roles or "admin" in self.roles

    @property
    def sees_pii(self) -> bool:
        """True when PII features may be shown to this caller unmasked."""
        return "pii" in self.scopes or "admin" in self.roles


def digest(key: str) -> str:
    """The SHA-256 of a key, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_from_secret(secret: str, roles: Iterable[str], scopes: Iterable[str] = ()) -> ApiKey:
    """The configuration of a key whose secret is known (dev keys, new keys)."""
    hashed = digest(secret)
    return ApiKey(
        key_id=f"k{hashed[:10]}", sha256=hashed, roles=frozenset(roles), scopes=frozenset(scopes)
    )


def new_key(role: Role, scopes: Iterable[str] = ()) -> tuple[str, ApiKey]:
    """A fresh random key and its configuration entry."""
    secret = f"sg_{secrets.token_urlsafe(32)}"
    return secret, key_from_secret(secret, [role], scopes)


def parse_keys(text: str) -> list[ApiKey]:
    """Key entries separated by commas or newlines; ``#`` starts a comment."""
    keys = []
    for number, raw in enumerate(text.replace(",", "\n").splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) not in {3, 4}:
            raise KeyConfigError(f"key entry {number}: expected id:sha256:roles[:scopes]")
        key_id, hashed, roles_text = parts[:3]
        roles = frozenset(roles_text.split("+"))
        scopes = frozenset(parts[3].split("+")) if len(parts) == 4 and parts[3] else frozenset()
        if len(hashed) != 64 or any(c not in "0123456789abcdef" for c in hashed):
            raise KeyConfigError(f"key entry {number} ({key_id}): sha256 must be 64 hex digits")
        if not roles or not roles <= set(ROLES):
            raise KeyConfigError(f"key entry {number} ({key_id}): roles must be among {ROLES}")
        if not scopes <= SCOPES:
            raise KeyConfigError(f"key entry {number} ({key_id}): scopes must be among {SCOPES}")
        keys.append(ApiKey(key_id=key_id, sha256=hashed, roles=roles, scopes=scopes))
    return keys


def parse_dev_keys(text: str) -> dict[Role, str]:
    """``scorer=KEY,auditor=KEY,...`` (``SCOREGATE_DEV_KEYS``) into secrets by role."""
    found: dict[Role, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, _, secret = item.partition("=")
        if role not in ROLES or not secret:
            raise KeyConfigError(f"dev key {item.split('=')[0]!r}: expected <role>=<key>")
        found[role] = secret
    return found


class KeyRing:
    """The configured keys, checked in constant time."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), k) for k in keys]

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of a presented key, or None; every hash is compared."""
        candidate = hashlib.sha256(presented.encode()).digest()
        match: ApiKey | None = None
        for hashed, key in self._keys:
            if hmac.compare_digest(hashed, candidate):
                match = key
        if match is None:
            return None
        return Principal(key_id=match.key_id, roles=match.roles, scopes=match.scopes)


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Resolves ``Authorization: Bearer <key>`` (or the page's cookie) to a Principal."""

    def __init__(self, app: ASGIApp, keyring: KeyRing, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._keyring = keyring

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """401 unless the request carries a configured key."""
        with stage("auth"):
            result = self._authenticate(connection)
            needed = connection.route_handler.opt.get(ROLE_OPT)
            if needed is not None and not result.user.has(needed):
                raise PermissionDeniedException(f"this needs the {needed} role")
        # Where decoding starts: the handler closes a "decode" span from here.
        connection.scope.setdefault("state", {})[AUTH_DONE] = time.time_ns()
        return result

    def _authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            presented = connection.cookies.get(COOKIE, "")
        principal = self._keyring.authenticate(presented.strip()) if presented else None
        if principal is None:
            raise NotAuthorizedException(
                "a valid API key is required (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return AuthenticationResult(user=principal, auth=None)


def requires(role: Role) -> dict[str, Role]:
    """Route options admitting only keys that hold ``role`` (``opt=requires("auditor")``).

    The authentication middleware checks the role as it resolves the key: a Litestar
    guard would cost a copy of the route handler per request.
    """
    return {ROLE_OPT: role}
