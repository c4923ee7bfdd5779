"""Security settings: validation, the client options built from them, tokens and rate limits."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from service.adapters.connections import (
    faust_credentials,
    kafka_options,
    redis_location,
    redis_options,
)
from service.adapters.http_security import RateLimiter, TokenSet, api_auth_required
from service.config import ConfigError, load_settings

SASL = {"CX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CX_KAFKA_SASL_USERNAME": "cx",
        "CX_KAFKA_SASL_PASSWORD": "pw-123"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CX_KAFKA_SECURITY_PROTOCOL": "TLS"}, "CX_KAFKA_SECURITY_PROTOCOL"),
        ({"CX_KAFKA_SASL_MECHANISM": "GSSAPI"}, "CX_KAFKA_SASL_MECHANISM"),
        ({**SASL, "CX_KAFKA_SASL_USERNAME": ""}, "CX_KAFKA_SASL_USERNAME"),
        ({**SASL, "CX_KAFKA_SASL_PASSWORD": ""}, "CX_KAFKA_SASL_PASSWORD"),
        ({**SASL, "CX_KAFKA_SASL_PASSWORD_FILE": "/x"}, "CX_KAFKA_SASL_PASSWORD"),
        ({"CX_KAFKA_SSL_CERTFILE": "/c.pem"}, "CX_KAFKA_SSL_CERTFILE"),
        ({"CX_REDIS_TLS_CA_FILE": "/ca.pem"}, "CX_REDIS_TLS_CA_FILE"),
        ({"CX_REDIS_URL": "rediss://h:1/0", "CX_REDIS_TLS_KEY_FILE": "/k"},
         "CX_REDIS_TLS_CERT_FILE"),
        ({"CX_REDIS_PASSWORD": "a", "CX_REDIS_PASSWORD_FILE": "/p"}, "CX_REDIS_PASSWORD"),
        ({"CX_API_AUTH": "maybe"}, "CX_API_AUTH"),
        ({"CX_API_AUTH": "token"}, "CX_API_AUTH"),
        ({"CX_API_TOKENS": "short"}, "CX_API_TOKENS"),
        ({"CX_CORS_ORIGINS": "wallboard.example.com"}, "CX_CORS_ORIGINS"),
        ({"CX_API_RATE_LIMIT": "-1"}, "CX_API_RATE_LIMIT"),
    ],
)
def test_bad_security_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}"):
        load_settings(env)


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = load_settings({**SASL, "CX_API_TOKENS": "api-token-0123456789",
                              "CX_METRICS_TOKEN": "metrics-secret-0123",
                              "CX_REDIS_PASSWORD": "rpw-9"})
    shown = repr(settings)
    for secret in ("pw-123", "api-token-0123456789", "metrics-secret-0123", "rpw-9"):
        assert secret not in shown
    assert "kafka_sasl_username='cx'" in shown


def test_plaintext_kafka_gets_no_tls_and_no_sasl() -> None:
    settings = load_settings({})
    assert kafka_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None


def test_sasl_ssl_options_for_aiokafka_and_faust(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file-pw\n")
    env = {**SASL, "CX_KAFKA_SASL_PASSWORD": "", "CX_KAFKA_SASL_PASSWORD_FILE": str(secret),
           "CX_KAFKA_SASL_MECHANISM": "scram-sha-256"}
    options = kafka_options(load_settings(env))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "cx"
    assert options["sasl_plain_password"] == "from-file-pw"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    credentials = faust_credentials(load_settings(env))
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert credentials.password == "from-file-pw"


def test_ssl_only_and_sasl_plaintext() -> None:
    ssl_only = load_settings({"CX_KAFKA_SECURITY_PROTOCOL": "SSL",
                              "CX_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    assert isinstance(faust_credentials(ssl_only), faust.SSLCredentials)
    assert kafka_options(ssl_only)["ssl_context"].check_hostname is False
    plain = load_settings({**SASL, "CX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert "ssl_context" not in kafka_options(plain)
    credentials = faust_credentials(plain)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT"


def test_unreadable_secret_and_ca_files_name_their_variable(tmp_path: Path) -> None:
    env = {**SASL, "CX_KAFKA_SASL_PASSWORD": "",
           "CX_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match=r"^CX_KAFKA_SASL_PASSWORD_FILE: cannot read"):
        kafka_options(load_settings(env))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^CX_KAFKA_SASL_PASSWORD_FILE: .* is empty"):
        kafka_options(load_settings({**env, "CX_KAFKA_SASL_PASSWORD_FILE":
                                     str(tmp_path / "empty")}))
    with pytest.raises(ConfigError, match=r"^CX_KAFKA_SSL_CAFILE: cannot load"):
        kafka_options(load_settings({**SASL, "CX_KAFKA_SSL_CAFILE": str(tmp_path / "no.pem")}))


def test_redis_options(tmp_path: Path) -> None:
    assert redis_options(load_settings({})) == {}
    secret = tmp_path / "redis-password"
    secret.write_text("r-pw\n")
    options = redis_options(load_settings({
        "CX_REDIS_URL": "rediss://redis.internal:6380/0", "CX_REDIS_USERNAME": "cx-worker",
        "CX_REDIS_PASSWORD_FILE": str(secret), "CX_REDIS_TLS_CA_FILE": "/ca.pem",
        "CX_REDIS_TLS_CERT_FILE": "/c.pem", "CX_REDIS_TLS_KEY_FILE": "/k.pem"}))
    assert options == {
        "username": "cx-worker", "password": "r-pw", "ssl_cert_reqs": "required",
        "ssl_check_hostname": True, "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
    }


def test_redis_location_hides_user_and_password() -> None:
    assert redis_location("rediss://u:secret@h:6380/0") == "rediss://h:6380/0"
    assert redis_location("redis://h:6379/0") == "redis://h:6379/0"


def test_api_auth_default_depends_on_the_address() -> None:
    assert api_auth_required(load_settings({"CX_API_TOKENS": "t" * 16})) is True
    assert api_auth_required(load_settings({"CX_HTTP_HOST": "::1"})) is False
    assert api_auth_required(load_settings({"CX_HTTP_HOST": "localhost"})) is False
    with pytest.raises(ConfigError):
        api_auth_required(load_settings({"CX_HTTP_HOST": "10.0.0.5"}))


def test_token_identity_is_not_the_token() -> None:
    tokens = TokenSet(("a" * 20, "b" * 20))
    first, second = tokens.match("a" * 20), tokens.match("b" * 20)
    assert first is not None
    assert second is not None
    assert first != second
    assert "a" * 20 not in first
    assert tokens.match("a" * 19) is None
    assert tokens.match("") is None


def test_token_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=3, clock=lambda: now[0])
    assert [limiter.wait("c") for _ in range(3)] == [0, 0, 0]
    assert limiter.wait("c") == pytest.approx(0.1)
    now[0] += 0.1
    assert limiter.wait("c") == 0
    assert limiter.wait("c") > 0
    now[0] += 100  # a long pause refills to the burst, not beyond
    assert [limiter.wait("c") for _ in range(4)][-1] > 0
    assert RateLimiter(rate=0, burst=1).wait("c") == 0  # 0 turns the limit off


def test_token_bucket_forgets_the_longest_idle_clients() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_clients=2, clock=lambda: 0.0)
    for client in ("a", "b", "c"):
        assert limiter.wait(client) == 0
    assert limiter.wait("c") > 0  # remembered
    assert limiter.wait("a") == 0  # forgotten: a new full bucket
