"""How every client of the service reaches Kafka and Redis: TLS, SASL and ACL options built from
the `CX_` settings in one place, and the startup checks that turn a wrong password or an
untrusted certificate into one clear error instead of endless retries (docs/security.md).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
from faust.types.auth import CredentialsT

from service.config import ConfigError, Settings
from service.redis_url import parse_redis_url


class StartupError(RuntimeError):
    """A server refused the service's credentials or certificate: retrying cannot help."""


def _read_secret(path: str, variable: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.readline().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r} ({exc.strerror})") from None
    if not secret:
        raise ConfigError(f"{variable}: {path!r} is empty")
    return secret


def _tls_context(cafile: str, certfile: str, keyfile: str, check_hostname: bool,
                 names: tuple[str, str, str]) -> ssl.SSLContext:
    """A client TLS context: certificates always verified, TLS 1.2 or newer."""
    try:
        context = ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{names[0]}: cannot load {cafile!r} ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{names[1]}: cannot load {certfile!r} with {names[2]} ({exc})"
                              ) from None
    return context


# --- Kafka ---------------------------------------------------------------------------------


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return _tls_context(settings.kafka_ssl_cafile, settings.kafka_ssl_certfile,
                        settings.kafka_ssl_keyfile, settings.kafka_ssl_check_hostname,
                        ("CX_KAFKA_SSL_CAFILE", "CX_KAFKA_SSL_CERTFILE", "CX_KAFKA_SSL_KEYFILE"))


def kafka_sasl_password(settings: Settings) -> str:
    if settings.kafka_sasl_password_file:
        return _read_secret(settings.kafka_sasl_password_file, "CX_KAFKA_SASL_PASSWORD_FILE")
    return settings.kafka_sasl_password


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client (producer, consumer, admin)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=kafka_sasl_password(settings),
        )
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The same options in the form the Faust app takes (`broker_credentials`)."""
    protocol = settings.kafka_security_protocol
    context = kafka_ssl_context(settings)
    if protocol.startswith("SASL_"):
        credentials: CredentialsT = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=kafka_sasl_password(settings),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
        return credentials
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _describe(exc: BaseException) -> str | None:
    """What to tell the operator when `exc` (or its cause) means retrying is pointless."""
    from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {seen.verify_message or seen}"
        if isinstance(seen, ssl.SSLError) and not isinstance(
                seen, ssl.SSLEOFError | ssl.SSLZeroReturnError):  # those: the peer hung up
            return f"TLS handshake failed: {seen}"
        if isinstance(seen, SaslAuthenticationFailed):
            return f"SASL authentication failed: {seen}"
        if isinstance(seen, UnsupportedSaslMechanismError):
            return f"SASL authentication failed: the broker does not offer this mechanism: {seen}"
        seen = seen.__cause__ or seen.__context__
    return None


async def kafka_startup_failure(settings: Settings, *,
                                timeout: float = 10.0) -> StartupError | None:
    """After a failed bootstrap, connect once to each bootstrap server to learn why: aiokafka
    only logs the reason. A StartupError when no retry can succeed (authentication refused,
    certificate not trusted, TLS spoken to a plain port); None when the broker may just be
    unreachable for now."""
    from aiokafka.conn import create_conn

    options = kafka_options(settings)
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **options),
                timeout,
            )
        except Exception as exc:
            reason = _describe(exc)
            if reason is not None:
                return StartupError(
                    f"Kafka at {server} ({settings.kafka_security_protocol}"
                    + (f", {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r}"
                       if settings.kafka_security_protocol.startswith("SASL_") else "")
                    + f"): {reason}")
            continue
        conn.close()
    return None


# --- Redis ---------------------------------------------------------------------------------


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for redis-py's `from_url`, beyond what CX_REDIS_URL itself says."""
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password_file:
        options["password"] = _read_secret(settings.redis_password_file, "CX_REDIS_PASSWORD_FILE")
    elif settings.redis_password:
        options["password"] = settings.redis_password
    if _redis_tls(settings.redis_url):
        options.update(ssl_cert_reqs="required",
                       ssl_check_hostname=settings.redis_tls_check_hostname,
                       ssl_min_version=ssl.TLSVersion.TLSv1_2)
        if settings.redis_tls_ca_file:
            options["ssl_ca_certs"] = settings.redis_tls_ca_file
        if settings.redis_tls_cert_file:
            options.update(ssl_certfile=settings.redis_tls_cert_file,
                           ssl_keyfile=settings.redis_tls_key_file)
    return options


def _redis_tls(url: str) -> bool:
    if url.startswith("rediss://"):
        return True
    try:
        return parse_redis_url(url).tls
    except ValueError:
        return False


def redis_location(url: str) -> str:
    """The URL without user and password, fit for a message."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2]


async def redis_startup_failure(settings: Settings, *,
                                timeout: float = 10.0) -> StartupError | None:
    """Ping Redis once with the service's options: a StartupError when it refuses the
    credentials or the certificate; None when it answers or is merely unreachable for now
    (the worker then retries, as for any outage)."""
    from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

    from service.adapters.redis_modes import client_for

    client = client_for(settings.redis_url, socket_connect_timeout=timeout,
                        socket_timeout=timeout, **redis_options(settings))
    where = redis_location(settings.redis_url)
    try:
        await client.ping()
        await client.info("server")  # the worker reads Redis' run id (an ACL must allow INFO)
    except AuthenticationError as exc:
        return StartupError(f"Redis at {where}: authentication failed ({exc}); check "
                            "CX_REDIS_USERNAME / CX_REDIS_PASSWORD or the URL's user and password")
    except NoPermissionError as exc:
        return StartupError(f"Redis at {where}: the user may not run a command the worker "
                            f"needs ({exc}); see the ACL in docs/security.md")
    except ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return StartupError(f"Redis at {where}: authentication failed ({exc})")
        raise
    except (RedisError, OSError) as exc:
        reason = _describe(exc)
        if reason is not None:
            return StartupError(f"Redis at {where}: {reason}")
    finally:
        await client.aclose()
    return None
