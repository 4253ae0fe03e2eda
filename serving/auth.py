"""API clients: named keys with scopes, recognised from a request's bearer token in constant time.

A client is configured by its name, its scopes and the sha256 of its key, never the key itself, in
`serving.api_keys_file` or `BHASHAFLOW_API_KEYS` (both a YAML or JSON list; `python -m serving.keys new`
makes a key and its entry). `BHASHAFLOW_API_TOKEN` is the client `token`, with every scope. Keys are
random (32 bytes from `secrets`), so a plain sha256 is enough: there is nothing to guess a dictionary of.

Scopes: `translate` (POST /v1/translate, LibreTranslate's POST /translate), `feedback` (POST /v1/feedback on the
client's own episodes, LibreTranslate's POST /suggest), `admin` (POST /v1/adapters/reload; with `feedback`,
feedback on any episode). Reading endpoints need no scope.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bhashaflow.config import ConfigError, ServingConfig
from bhashaflow.core.hashing import sha256_bytes
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import ANONYMOUS_CLIENT

Scope = Literal["translate", "feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("translate", "feedback", "admin")
TOKEN_CLIENT = "token"  # the name BHASHAFLOW_API_TOKEN's requests and feedback are recorded under
CLIENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class ApiClientEntry(BaseModel):
    """One client of the keys file: who it is, what it may do, and how to recognise its key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CLIENT_NAME, description="Recorded with its episodes and feedback.")
    scopes: list[Scope] = Field(min_length=1, description="What the key may do: translate, feedback, admin.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the key's UTF-8 bytes.")


@dataclass(frozen=True)
class Client:
    """Who sent a request, and what it may do."""

    name: str
    scopes: frozenset[str]

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS_CLIENT


# A request without a key on a service without require_auth: it may translate and rate its own (anonymous)
# episodes, never reload.
ANONYMOUS = Client(ANONYMOUS_CLIENT, frozenset({"translate", "feedback"}))


def hash_key(key: str) -> str:
    """The hex sha256 a keys file holds for `key`."""
    return sha256_bytes(key.encode("utf-8"))


class KeyRing:
    """The configured clients (`serving.deps.identify_key` tells which one a key is).

    Args:
        token: BHASHAFLOW_API_TOKEN (the client `token`, every scope), or None.
        entries: the clients of the keys file and BHASHAFLOW_API_KEYS.
    """

    def __init__(self, token: str | None, entries: Iterable[ApiClientEntry] = ()) -> None:
        self.token = token.encode("utf-8") if token else None
        self.hashed = [(e.sha256.encode("ascii"), Client(e.name, frozenset(e.scopes))) for e in entries]
        self.token_client = Client(TOKEN_CLIENT, frozenset(SCOPES))

    @property
    def configured(self) -> bool:
        """Whether any key at all would be accepted."""
        return self.token is not None or bool(self.hashed)

    def clients(self) -> list[Client]:
        """Every configured client (the token first), for the start-up log."""
        return ([self.token_client] if self.token is not None else []) + [c for _, c in self.hashed]


def parse_entries(text: str, source: str) -> list[ApiClientEntry]:
    """The clients listed in `text`. Errors name the entry and the field, never a value: someone may have
    pasted a key where its hash belongs."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML or JSON{where}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected a list of clients (name, scopes, sha256)")
    entries = []
    for i, item in enumerate(data, 1):
        try:
            entries.append(ApiClientEntry.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors(include_input=False)
            )
            raise ConfigError(f"{source}: client {i}: {problems}") from None
    return entries


def load_key_ring(settings: Settings, serving: ServingConfig) -> KeyRing:
    """The clients of BHASHAFLOW_API_TOKEN, BHASHAFLOW_API_KEYS and serving.api_keys_file; ConfigError when
    one is malformed, a name is reserved or repeated, or a key is listed twice."""
    entries: list[ApiClientEntry] = []
    if settings.api_keys is not None:
        entries += parse_entries(settings.api_keys, "BHASHAFLOW_API_KEYS")
    if serving.api_keys_file is not None:
        path = Path(serving.api_keys_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"serving.api_keys_file {path}: cannot read it ({type(exc).__name__})") from None
        entries += parse_entries(text, f"serving.api_keys_file {path}")
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    check_unique(entries, token)
    return KeyRing(token, entries)


def check_unique(entries: list[ApiClientEntry], token: str | None) -> None:
    names: set[str] = set()
    hashes: set[str] = {hash_key(token)} if token else set()
    for entry in entries:
        if entry.name in (ANONYMOUS_CLIENT, TOKEN_CLIENT):
            raise ConfigError(
                f"API client name {entry.name!r} is reserved (anonymous: no key; token: BHASHAFLOW_API_TOKEN)"
            )
        if entry.name in names:
            raise ConfigError(f"API client {entry.name!r} is listed twice")
        if entry.sha256 in hashes:
            raise ConfigError(f"API client {entry.name!r} has the key of another client (or of BHASHAFLOW_API_TOKEN)")
        names.add(entry.name)
        hashes.add(entry.sha256)


# --- who may reach an anonymous service -------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding `host` reaches this machine only (127.0.0.0/8, ::1, a name resolving only to those)."""
    name = host.strip().strip("[]")
    if not name:
        return False  # "" binds every interface
    try:
        addresses: set[Any] = {ipaddress.ip_address(name)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(name, None)
        except (OSError, UnicodeError):
            return False  # unresolvable: uvicorn will not bind it either; never call it safe
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    if not addresses:
        return False
    mapped = {getattr(a, "ipv4_mapped", None) or a for a in addresses}
    return all(a.is_loopback for a in mapped)


KEYS_HOWTO = (
    "set serving.require_auth: true and give each client an API key (`python -m serving.keys new NAME --scopes "
    "translate,feedback` prints a key and the entry for serving.api_keys_file or BHASHAFLOW_API_KEYS; "
    "BHASHAFLOW_API_TOKEN is a key with every scope)"
)


def exposure_warning(serving: ServingConfig, host: str) -> str | None:
    """None when binding `host` is safe; the warning to log when it is anonymous and public on purpose.

    Raises:
        ConfigError: a non-loopback address without serving.require_auth, and no serving.allow_anonymous.
    """
    if serving.require_auth or is_loopback(host):
        return None
    if not serving.allow_anonymous:
        raise ConfigError(
            f"refusing to serve on {host!r} without authentication: anyone who can reach it could post feedback "
            f"that trains the next adapter. To enable keys, {KEYS_HOWTO}. To serve anonymously on purpose, set "
            "serving.allow_anonymous: true; or bind 127.0.0.1"
        )
    return (
        f"serving.allow_anonymous: serving on {host!r} without authentication; anyone who can reach it may "
        f"translate and give feedback (recorded as {ANONYMOUS_CLIENT!r}) that can train the next adapter"
    )
