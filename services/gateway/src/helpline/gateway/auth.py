"""Who is calling: every `/api/v1` route needs `Authorization: Bearer <key>`.

Each router of the API declares the scope its routes need (`requires(Scope.X)`); the
guard finds the key (in memory, `keys.KeyStore`), checks the scope, spends one request of
the key's rate limit (`ratelimit`, shared by every replica) and leaves the key on
`request.state.key` for the brand checks (`Caller`, `check_brand`, `visible_brands`).

No key, or an unknown or revoked one: 401 with `WWW-Authenticate: Bearer`; a key without
the scope or the brand: 403; over the rate limit: 429. The body says which, never whether
another key exists, and the key itself is never logged, stored or echoed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from helpline.gateway.errors import Forbidden, GatewayStarting, RateLimited, Unauthenticated
from helpline.gateway.keys import ApiKey, KeyRing, Scope
from helpline.gateway.ratelimit import RateLimiter
from helpline.gateway.schemas import ErrorBody

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key: `Authorization: Bearer <key>`. `helpline up` prints where its "
    "admin key is kept; `POST /api/v1/keys` makes more.",
)

#: What a guarded route may answer besides its own responses (the OpenAPI document's).
GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown or revoked one."},
    403: {"model": ErrorBody, "description": "The key lacks the scope or the brand."},
    429: {
        "model": ErrorBody,
        "description": "The key's rate limit is spent (Retry-After, RateLimit-* headers).",
    },
    503: {
        "model": ErrorBody,
        "description": "The gateway is starting, or the bus did not answer (Retry-After).",
    },
}


#: Per scope, the guard function (one each, so a benchmark can override it to measure the
#: same routes without it through FastAPI's `dependency_overrides`).
GUARDS: dict[Scope, Any] = {}


def requires(scope: Scope) -> Any:
    """The dependency a router of `scope` lists in its `dependencies`."""
    if scope in GUARDS:
        return Depends(GUARDS[scope])

    async def authorize(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        state = request.app.state
        keys: KeyRing | None = getattr(state, "keys", None)
        limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
        if keys is None:
            raise GatewayStarting
        if credentials is None or not credentials.credentials:
            raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
        key = await keys.lookup(credentials.credentials)
        if key is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        if not key.allows(scope):
            raise Forbidden(f"this key lacks the {scope.value!r} scope")
        if limiter is not None:
            verdict = await limiter.check(key)
            request.state.rate_headers = verdict.headers()
            if not verdict.allowed:
                raise RateLimited(verdict.headers())
        request.state.key = key

    GUARDS[scope] = authorize
    return Depends(authorize)


def _caller(request: Request) -> ApiKey:
    key: ApiKey = request.state.key  # set by the router's guard, which ran first
    return key


Caller = Annotated[ApiKey, Depends(_caller)]


def check_brand(key: ApiKey, brand: str | None) -> None:
    """403 unless `key` may use `brand` (None: every brand, for unlimited keys only)."""
    if not key.allows_brand(brand):
        if brand is None:
            raise Forbidden("this key is limited to brands: name one (brand)")
        raise Forbidden(f"this key may not use brand {brand!r}")


def check_all_brands(key: ApiKey, what: str) -> None:
    """403 for a brand-limited key: `what` spans every brand."""
    if key.brands is not None:
        raise Forbidden(f"{what} spans every brand: it needs a key not limited to brands")


def visible(key: ApiKey, brand: str | None) -> bool:
    """Whether a resource of `brand` may reach `key` (one of no brand: unlimited keys only)."""
    return key.brands is None or (brand is not None and brand in key.brands)
