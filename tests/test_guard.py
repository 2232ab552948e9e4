"""Token loading and the token-bucket limiter, without a server: the arithmetic and the error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from qe_appliance.config import AuthConfig, ConfigError, RateLimitConfig
from qe_appliance.http import guard
from qe_appliance.http.guard import Guard, RateLimiter, load_tokens

GOOD = "k" * 20


def test_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=3)
    assert [limiter.wait("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait("a", 0.0) == pytest.approx(0.1)  # empty: one token takes 1/rate
    assert limiter.wait("a", 0.05) == pytest.approx(0.05)  # half refilled, still refused
    assert limiter.wait("a", 0.1) == 0.0  # refused waits do not cost a token
    assert limiter.wait("b", 0.1) == 0.0  # every client has its own bucket
    assert [limiter.wait("a", 100.0) for _ in range(4)][:3] == [0.0] * 3  # refills to the burst, not beyond


def test_idle_buckets_are_dropped_first_when_there_are_too_many(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "MAX_BUCKETS", 4)
    limiter = RateLimiter(rate=1.0, burst=2)
    for client in "abc":
        limiter.wait(client, 0.0)
    limiter.wait("d", 0.0)
    limiter.wait("d", 0.0)  # d is empty; a, b, c refill by t=1
    limiter.wait("e", 1.5)  # full table: the refilled ones go, d (still owing) stays
    assert set(limiter._buckets) == {"d", "e"}


def test_tokens_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n\n  {GOOD}  \n{GOOD}\n")
    auth = AuthConfig(tokens_file=str(path), tokens_env="AQE_T")
    assert load_tokens(auth, {"AQE_T": f"{'m' * 16},{'n' * 16} {GOOD}"}) == (
        GOOD.encode(), b"m" * 16, b"n" * 16
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no token"),
        ("# only a comment\n", "holds no token"),
        ("short\n", "token 1 is 5 characters; use at least 16"),
        (f"{GOOD}\nwith space inside it here\n", "token 2 has characters a bearer token cannot carry"),
        ("tøken-with-latin1-chars-x\n", "cannot carry"),
    ],
)
def test_bad_token_files_say_what_to_fix(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as refused:
        load_tokens(AuthConfig(tokens_file=str(path)))
    assert "secrets.token_urlsafe" in str(refused.value)


def test_guard_compares_whole_tokens_only() -> None:
    g = Guard(AuthConfig(tokens_file="x"), (GOOD.encode(),), RateLimitConfig(requests_per_second=0))
    assert g.token_of({"authorization": f"Bearer {GOOD}"}) == GOOD.encode()
    for value in (f"Bearer {GOOD}x", f"Bearer {GOOD[:-1]}", "Bearer ", "Bearer", GOOD, f"Token {GOOD}"):
        assert g.token_of({"authorization": value}) is None
    assert g.check({}, "127.0.0.1", 0.0, protected=False) is None  # /metrics without protectMetrics
    refusal = g.check({}, "127.0.0.1", 0.0, protected=True)
    assert refusal is not None and refusal.status == 401 and refusal.reason == "auth"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("protectMetrics: true", "server.auth.protectMetrics: needs tokens to check: set tokensFile or tokensEnv"),
        ("tokensEnv: 'Bearer abc'", "server.auth.tokensEnv: `Bearer abc` is not an environment variable name"),
    ],
)
def test_config_checks_of_the_auth_block(tmp_path: Path, auth: str, expected: str) -> None:
    from qe_appliance.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(f"server:\n  auth:\n    {auth}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.errors[0].startswith(f"{path}:3: {expected}")


def test_x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() -> None:
    rate = RateLimitConfig()
    behind = Guard(AuthConfig(), (), rate, ("127.0.0.1/32", "10.0.0.0/8"))
    # The last hop that is not a trusted proxy: earlier entries are whatever the client claimed.
    assert behind.client_address("127.0.0.1", {"x-forwarded-for": "198.51.100.7"}) == "198.51.100.7"
    assert behind.client_address("127.0.0.1", {"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.1.2.3"}) == "198.51.100.7"
    assert behind.client_address("127.0.0.1", {"x-forwarded-for": "10.0.0.1"}) == "127.0.0.1"
    assert behind.client_address("127.0.0.1", {}) == "127.0.0.1"
    # From a peer that is not a trusted proxy the header is ignored.
    assert behind.client_address("192.0.2.9", {"x-forwarded-for": "198.51.100.7"}) == "192.0.2.9"
    assert Guard(AuthConfig(), (), rate).client_address("127.0.0.1", {"x-forwarded-for": "198.51.100.7"}) == (
        "127.0.0.1")
