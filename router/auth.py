"""API keys: who is calling, as which tenant, allowed what. Both fronts (gRPC and HTTP)
pass every request through one `Gate` before the router core, so a key means the same
on either.

The keys file (``--api-keys``, TOML or JSON) maps the SHA-256 of each key to its tenant;
the keys themselves are never stored, logged or echoed::

    [keys.<sha256 hex of the key>]
    tenant = "acme"
    policies = ["edge", "cloud"]   # optional: the policies (models tandem-<policy>) allowed
    rate_limit_rps = 2.0           # optional: this key's own rate limit (token bucket)
    rate_limit_burst = 5

With keys, a request without a known key is refused before any work, and the tenant is
the key's whatever the request says (so it cannot use another tenant's sessions, limits,
budget or response cache). Without keys the router runs open: the request's own
``tenant`` field is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.router.core import NAME_PATTERN, RouterCore
from tandem.router.state import Limits, StateStore
from tandem.router.tenancy import TenantLimiter
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import (InvalidArgument, PermissionDenied, ResourceExhausted,
                                  Unauthenticated)
from tandem.shared.log import log_event
from tandem.v1 import router_pb2

logger = logging.getLogger(__name__)

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_FIELDS = {"tenant", "policies", "rate_limit_rps", "rate_limit_burst"}
BEARER = "bearer "


def key_hash(key: str) -> str:
    """What the keys file stores for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key's tenant and what it may do."""

    tenant: str
    digest: str  # its SHA-256: names its own rate-limit bucket
    policies: frozenset[str] | None = None  # None: every policy
    rate_limit_rps: float = 0.0  # 0: no limit of its own (the tenant's still applies)
    rate_limit_burst: int = 0

    def allows(self, policy: str) -> bool:
        return self.policies is None or policy in self.policies


def _entry(digest: str, raw: Any, source: str) -> ApiKey:
    where = f"{source}: keys.{digest[:12]}…"
    if not SHA256_HEX.fullmatch(digest):
        raise ValueError(f"{source}: key names must be SHA-256 hex digests (64 of [0-9a-f])")
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = set(raw) - KEY_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(KEY_FIELDS)}")
    tenant = raw.get("tenant")
    if not isinstance(tenant, str) or not NAME_PATTERN.fullmatch(tenant):
        raise ValueError(f"{where}: tenant must be 1-128 characters of [A-Za-z0-9._:-]")
    policies = raw.get("policies")
    if policies is not None and not (isinstance(policies, list)
                                     and all(isinstance(p, str) for p in policies)):
        raise ValueError(f"{where}: policies must be a list of policy names")
    rps, burst = raw.get("rate_limit_rps", 0.0), raw.get("rate_limit_burst", 0)
    if not (isinstance(rps, int | float) and rps >= 0 and isinstance(burst, int) and burst >= 0):
        raise ValueError(f"{where}: rate_limit_rps and rate_limit_burst must be >= 0")
    if rps > 0 and burst < 1:
        raise ValueError(f"{where}: a rate limit needs rate_limit_burst >= 1")
    return ApiKey(tenant, digest, None if policies is None else frozenset(policies),
                  float(rps), burst)


class KeyRing:
    """The keys of a keys file, by digest."""

    def __init__(self, keys: dict[str, ApiKey]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, path: str | Path, known_policies: set[str] | None = None) -> KeyRing:
        """Read a TOML (or, for a .json file, JSON) keys file; raises ValueError."""
        path = Path(path)
        data = (json.loads(path.read_text()) if path.suffix == ".json"
                else tomllib.loads(path.read_text()))
        table = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{path}: needs a non-empty 'keys' table")
        keys = {digest.lower(): _entry(digest.lower(), raw, str(path))
                for digest, raw in table.items()}
        if known_policies is not None:
            for key in keys.values():
                unknown = (key.policies or frozenset()) - known_policies
                if unknown:
                    raise ValueError(f"{path}: tenant {key.tenant!r} allows unknown policies "
                                     f"{sorted(unknown)}; known: {sorted(known_policies)}")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key of an ``Authorization: Bearer KEY`` value; raises Unauthenticated."""
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if authorization[:len(BEARER)].lower() != BEARER:
            raise Unauthenticated("the Authorization header must be 'Bearer <key>'")
        key = self._keys.get(key_hash(authorization[len(BEARER):].strip()))
        if key is None:
            raise Unauthenticated("unknown API key")
        return key


class Gate:
    """The way into the router core for both fronts: authenticates the caller (when keys
    are configured), makes the request the key's tenant's, checks the key's policies and
    own rate limit, then streams the core's answer."""

    def __init__(self, core: RouterCore, keys: KeyRing | None, state: StateStore) -> None:
        self.core = core
        self.keys = keys
        self.state = state
        self.tenants = TenantLimiter(core.config.tenant_max_concurrency)
        if keys is None:
            log_event(logger, "no API keys configured (--api-keys): the router is open and "
                              "takes each request's tenant field as given", logging.WARNING)
        else:
            log_event(logger, "API keys loaded", keys=len(keys))

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key (None when the router runs open); raises Unauthenticated."""
        return None if self.keys is None else self.keys.authenticate(authorization)

    def policies_for(self, key: ApiKey | None) -> list[str]:
        """The policies a caller may use, in the core's order."""
        return [name for name in self.core.policies if key is None or key.allows(name)]

    def authorize(self, key: ApiKey | None, request: router_pb2.GenerateRequest) -> None:
        """Bind the request to the key's tenant and check its policy."""
        if key is None:
            return
        request.tenant = key.tenant  # whatever the request claimed
        policy = request.policy or self.core.config.default_policy
        if not key.allows(policy):
            raise PermissionDenied(f"policy: this API key may not use policy {policy!r}; "
                                   f"allowed: {sorted(key.policies or ())}")

    async def stream(self, key: ApiKey | None, request: router_pb2.GenerateRequest,
                     deadline: Deadline) -> AsyncIterator[router_pb2.GenerateChunk]:
        """The core's answer to an authorized request, within its tenant's concurrency cap
        (router/tenancy.py: refused at once beyond it)."""
        self.authorize(key, request)
        with self.tenants.hold(request.tenant):
            async with aclosing(self._answer(key, request, deadline)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _answer(self, key: ApiKey | None, request: router_pb2.GenerateRequest,
                      deadline: Deadline) -> AsyncIterator[router_pb2.GenerateChunk]:
        """The key's own rate limit is taken first and given back when the core refuses the
        request before answering (a refused request changes no state)."""
        limits = await self._admit_key(key)
        answered = False
        try:
            async with aclosing(self.core.stream(request, deadline)) as chunks:
                async for chunk in chunks:
                    answered = True
                    yield chunk
        except (InvalidArgument, ResourceExhausted):
            if limits is not None and not answered:
                await self.state.unadmit(limits)
            raise

    async def _admit_key(self, key: ApiKey | None) -> Limits | None:
        if key is None or key.rate_limit_rps <= 0:
            return None
        # '#' cannot appear in a tenant name, so a key's bucket never is a tenant's.
        limits = Limits(f"key#{key.digest[:16]}", key.rate_limit_rps, key.rate_limit_burst)
        allowance = await self.state.admit(limits)
        if not allowance.allowed:
            raise ResourceExhausted(
                f"rate limit of {key.rate_limit_rps:g} requests/s of this API key exceeded; "
                f"retry after {allowance.retry_after_s:.3f} s", allowance.retry_after_s)
        return limits
