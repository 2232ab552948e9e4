"""Who may call, and how often: bearer-token authentication and a token-bucket rate limit per client.

Tokens come from a file or an environment variable named in `server.auth`, never from the YAML itself. A
client is its token when it presents a valid one, else its address, so failed guesses are rate limited too.
Behind a proxy listed in `server.trustedProxies` the address is the one its X-Forwarded-For names.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

from qe_appliance.config import AuthConfig, ConfigError, RateLimitConfig

log = logging.getLogger("aqe_mcp.http")

MIN_TOKEN_CHARS: Final = 16
# RFC 6750 b64token: what may follow "Bearer ".
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAKE_ONE: Final = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
# Buckets kept before full (idle) ones are dropped: bounds memory against clients cycling addresses.
MAX_BUCKETS: Final = 10_000
REALM: Final = 'Bearer realm="aqe-mcp"'


def load_tokens(auth: AuthConfig, environ: Mapping[str, str] = os.environ) -> tuple[bytes, ...]:
    """The accepted tokens, from `auth.tokensFile` and `auth.tokensEnv`; () when auth is off.

    Raises ConfigError saying what to fix when a source is configured but unreadable, empty or malformed.
    """
    tokens: list[bytes] = []
    problems: list[str] = []
    if auth.tokens_file:
        path = os.path.expandvars(auth.tokens_file)
        where = f"server.auth.tokensFile ({path})"
        try:
            with open(path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                text = fh.read(1 << 20).decode("utf-8")
        except OSError as exc:
            problems.append(f"{where}: cannot read it ({exc.strerror}); create it with one token per line, "
                            "readable by the service user only")
            text = ""
        except UnicodeDecodeError:
            problems.append(f"{where}: not UTF-8 text; write one token per line")
            text = ""
        else:
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("%s is readable by other users; chmod 600 it", where)
        lines = [line.strip() for line in text.splitlines()]
        _collect([line for line in lines if line and not line.startswith("#")], where, tokens, problems)
    if auth.tokens_env:
        where = f"server.auth.tokensEnv (${auth.tokens_env})"
        value = environ.get(auth.tokens_env)
        if value is None:
            problems.append(f"{where}: the variable is not set in the server's environment; set it to one or "
                            "more tokens separated by commas or spaces")
        else:
            _collect([t for t in re.split(r"[\s,]+", value) if t], where, tokens, problems)
    if problems:
        raise ConfigError(problems)
    return tuple(dict.fromkeys(tokens))


def _collect(candidates: list[str], where: str, tokens: list[bytes], problems: list[str]) -> None:
    if not candidates:
        problems.append(f"{where}: holds no token; put at least one there ({_MAKE_ONE})")
    for n, token in enumerate(candidates, 1):
        if not _B64TOKEN.fullmatch(token):
            problems.append(f"{where}: token {n} has characters a bearer token cannot carry; use letters, "
                            f"digits and -._~+/ only ({_MAKE_ONE})")
        elif len(token) < MIN_TOKEN_CHARS:
            problems.append(f"{where}: token {n} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                            f"({_MAKE_ONE})")
        else:
            tokens.append(token.encode("ascii"))


class RateLimiter:
    """A token bucket per client: `rate` requests a second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[object, list[float]] = {}

    def wait(self, client: object, now: float) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            self._buckets[client] = [self.burst - 1.0, now]
            return 0.0
        level = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if level >= 1.0:
            bucket[0] = level - 1.0
            return 0.0
        bucket[0] = level
        return (1.0 - level) / self.rate

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled completely holds no information: dropping it changes nothing.
        full = [key for key, (level, stamp) in self._buckets.items()
                if level + (now - stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()  # every client is active: start over rather than grow without bound


class Guard:
    """Decides whether a request may proceed: a valid token when auth is on, and within its rate."""

    def __init__(
        self, auth: AuthConfig, tokens: tuple[bytes, ...], rate: RateLimitConfig, trusted_proxies: Sequence[str] = ()
    ) -> None:
        self.limiter: RateLimiter | None = None
        self.configure(auth, tokens, rate, trusted_proxies)

    def configure(
        self, auth: AuthConfig, tokens: tuple[bytes, ...], rate: RateLimitConfig, trusted_proxies: Sequence[str] = ()
    ) -> None:
        """(Re)configure; rate-limit state survives when the rate itself did not change."""
        self.tokens = tokens
        self._proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        # Who a token is, as sessions record it: a digest, so the token itself is kept in one place only. The
        # same token is the same principal across reloads.
        self._principals = {token: "token:" + hashlib.sha256(token).hexdigest()[:32] for token in tokens}
        self.protect_metrics = auth.protect_metrics and bool(tokens)
        limiter = self.limiter
        if rate.requests_per_second <= 0:
            self.limiter = None
        elif limiter is None or (limiter.rate, limiter.burst) != (rate.requests_per_second, float(rate.burst)):
            self.limiter = RateLimiter(rate.requests_per_second, rate.burst)
        # Whether check() can refuse anything or name a principal: without tokens and a rate limit it cannot.
        self.active = bool(tokens) or self.limiter is not None

    def client_address(self, peer: str | None, headers: dict[str, str]) -> str | None:
        """Who is calling by address: the peer, or behind trusted proxies the last X-Forwarded-For hop that is
        not one of them (earlier hops are the client's own claims, which anyone can forge)."""
        forwarded = headers.get("x-forwarded-for")
        if peer is None or forwarded is None or not self._trusted(peer):
            return peer
        for hop in reversed(forwarded.split(",")):
            hop = hop.strip()
            if not self._trusted(hop):
                return hop or peer
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._proxies)

    def token_of(self, headers: dict[str, str]) -> bytes | None:
        """The presented token when it is one of ours; every configured token is compared in constant time."""
        value = headers.get("authorization")
        if value is None or len(value) < 7 or value[:7].lower() != "bearer ":
            return None
        presented = value[7:].strip().encode("latin-1")
        found = None
        for token in self.tokens:
            if hmac.compare_digest(presented, token):
                found = token
        return found

    def check(self, headers: dict[str, str], address: str | None, now: float, protected: bool) -> Refusal | str | None:
        """A Refusal (401 or 429) when the request may not proceed; else who is calling: the principal of a valid
        token, or None without one (auth off, or a route that needs none). `protected`: this route needs a token."""
        token = self.token_of(headers) if self.tokens else None
        if self.limiter is not None:
            wait = self.limiter.wait(token if token is not None else address, now)
            if wait > 0.0:
                retry = max(1, math.ceil(wait))
                message = (f"rate limit exceeded; retry in {retry} s (server.rateLimit allows this client "
                           f"{self.limiter.rate:g} requests/s)")
                return Refusal(429, "rate_limit", message, [("retry-after", str(retry))])
        if token is not None:
            return self._principals[token]
        if protected and self.tokens:
            if "authorization" in headers:
                return Refusal(401, "auth", "invalid bearer token",
                               [("www-authenticate", f'{REALM}, error="invalid_token"')])
            return Refusal(401, "auth", "missing bearer token: send Authorization: Bearer <token>",
                           [("www-authenticate", REALM)])
        return None


class Refusal(NamedTuple):
    status: int
    reason: str  # a monitoring REFUSAL_REASONS name
    message: str
    headers: list[tuple[str, str]]
