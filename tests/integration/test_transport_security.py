"""The worker and the tools over a Kafka SASL_SSL listener and a Redis with TLS and an ACL user,
with certificates made for the test; wrong credentials and untrusted certificates stop the
worker at once with a message that says so."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from service.adapters.connections import StartupError, kafka_options
from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from tests.support.secure import (
    KAFKA_PASSWORD,
    KAFKA_USER,
    REDIS_PASSWORD,
    REDIS_USER,
    Pki,
    SecureKafka,
    SecureRedis,
    make_pki,
)
from tests.support.stack import ROOT, Namespace, Stack, Worker, assign_topic, wait_until

API_TOKEN = "api-token-0123456789abcdef"
METRICS_TOKEN = "metrics-token-0123456789"


@dataclass
class Secured:
    pki: Pki
    kafka: SecureKafka
    redis: SecureRedis
    stack: Stack

    def namespace(self, **extra: str) -> tuple[Namespace, dict[str, str]]:
        """A namespace of its own, and the variables of a correctly configured client."""
        ns = self.stack.namespace()
        env = {
            "CX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "CX_KAFKA_SASL_USERNAME": KAFKA_USER,
            "CX_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
            "CX_KAFKA_SSL_CAFILE": str(self.pki.ca),
            "CX_REDIS_URL": f"rediss://127.0.0.1:{self.redis.port}/0",
            "CX_REDIS_USERNAME": REDIS_USER,
            "CX_REDIS_PASSWORD": REDIS_PASSWORD,
            "CX_REDIS_TLS_CA_FILE": str(self.pki.ca),
        }
        env.update(extra)
        return ns, env


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    (ROOT / ".cx-test").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="secure-", dir=ROOT / ".cx-test"))
    pki = make_pki(folder / "pki")
    kafka, redis = SecureKafka(folder / "kafka", pki), SecureRedis(folder / "redis", pki)
    try:
        redis.start()
        kafka.start()
        yield Secured(pki, kafka, redis, Stack(
            kafka_bootstrap=kafka.bootstrap, redis_url=redis.url(), redis_port=redis.port,
            script="", env={}, state_dir=folder))
    finally:
        kafka.stop()
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _read_one(env: dict[str, str], topic: str, timeout: float = 60) -> list[bytes]:
    settings = load_settings(env)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                **kafka_options(settings))
    await consumer.start()
    try:
        await assign_topic(consumer, topic)
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values = [m.value for msgs in batch.values() for m in msgs]
            if values:
                return values
        return []
    finally:
        await consumer.stop()


def test_worker_over_sasl_ssl_and_redis_tls_applies_an_event(secured: Secured,
                                                             tmp_path: Path) -> None:
    ns, extra = secured.namespace(CX_API_TOKENS=API_TOKEN, CX_METRICS_TOKEN=METRICS_TOKEN,
                                  CX_LOG_LEVEL="info")
    env = {**ns.settings_env(), **extra}
    worker = Worker(ns, tmp_path / "worker.log", **extra)
    try:
        worker.wait_ready(90)
        customer = "cust-sec-7f3a9c"
        event = {
            "event_id": "e-sec-1", "occurred_at": "2026-11-24T10:05:00Z",
            "contact_id": "contact-sec-1", "customer_id": customer,
            "started_at": "2026-11-24T10:00:00Z", "channel": "voice", "queue": "billing",
            "outcome": "handled", "agent_id": "agent-1",
        }

        events = tmp_path / "events.jsonl"
        events.write_bytes(orjson.dumps({"topic": "call-ended", "event": event}) + b"\n")
        produced = subprocess.run(  # the tools' producer, over SASL_SSL
            [sys.executable, "-m", "service", "produce", str(events), "--quiet"],
            env=ns.env(**extra), capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert produced.returncode == 0, produced.stderr
        assert "published 1 events" in produced.stdout
        enriched = asyncio.run(_read_one(env, ns.topic("contact-enriched")))
        assert [orjson.loads(v)["contact_id"] for v in enriched] == ["contact-sec-1"]

        base = worker.base_url
        wait_until(lambda: _get(f"{base}/api/v1/customers/{customer}", API_TOKEN)[0] == 200,
                   timeout=30, what="the customer over the API")
        status, body = _get(f"{base}/api/v1/customers/{customer}", API_TOKEN)
        assert orjson.loads(body)["recent_contacts"][0]["contact_id"] == "contact-sec-1"
        assert _get(f"{base}/api/v1/customers/{customer}")[0] == 401
        assert _get(f"{base}/api/v1/contacts/contact-sec-1", "wrong-token-0123456789")[0] == 401
        assert _get(f"{base}/api/v1/contacts/contact-sec-1", API_TOKEN)[0] == 200
        # aggregate, so open by default; its figures come from Redis through the ACL user
        wait_until(lambda: orjson.loads(_get(f"{base}/api/v1/wallboard")[1])["watermark"],
                   timeout=30, what="the wallboard to read Redis")
        assert _get(f"{base}/metrics")[0] == 401
        status, body = _get(f"{base}/metrics", METRICS_TOKEN)
        assert status == 200
        # the three refusals above: no token, a wrong token, /metrics without its token
        assert b'cx_http_rejected_total{reason="unauthorized"} 3.0' in body
        assert _get(f"{base}/router/")[0] == 404  # Faust's own pages are not served
        assert customer not in worker.logs(), "a customer id reached the log at info level"
    finally:
        assert worker.stop() == 0, worker.logs()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_topics_over_the_other_sasl_mechanisms(secured: Secured, mechanism: str) -> None:
    ns, extra = secured.namespace(CX_KAFKA_SASL_MECHANISM=mechanism)
    settings = load_settings({**ns.settings_env(), **extra})
    created = asyncio.run(ensure_topics(settings, timeout=20))
    assert ns.topic("call-ended") in created


def test_mutual_tls_with_a_client_certificate(secured: Secured) -> None:
    ns = secured.stack.namespace()
    env = {**ns.settings_env(), "CX_KAFKA_BOOTSTRAP": secured.kafka.mtls_bootstrap,
           "CX_KAFKA_SECURITY_PROTOCOL": "SSL", "CX_KAFKA_SSL_CAFILE": str(secured.pki.ca),
           "CX_KAFKA_SSL_CERTFILE": str(secured.pki.client_cert),
           "CX_KAFKA_SSL_KEYFILE": str(secured.pki.client_key)}
    created = asyncio.run(ensure_topics(load_settings(env), timeout=20))
    assert ns.topic("call-ended") in created
    without = {k: v for k, v in env.items() if not k.startswith(("CX_KAFKA_SSL_CERT",
                                                                  "CX_KAFKA_SSL_KEY"))}
    with pytest.raises(StartupError, match="TLS handshake failed"):
        asyncio.run(ensure_topics(load_settings(without), timeout=20))


def _start_fails(ns: Namespace, extra: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "service", "worker"], env=ns.env(**extra),
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert done.returncode == 3, done.stderr[-3000:]
    return done.stderr


@pytest.mark.parametrize(
    ("server", "change", "message"),
    [
        ("kafka", {"CX_KAFKA_SASL_PASSWORD": "not-the-password"}, "SASL authentication failed"),
        ("kafka", {"CX_KAFKA_SSL_CAFILE": "other"}, "TLS certificate verification failed"),
        ("redis", {"CX_REDIS_PASSWORD": "not-the-password"}, "authentication failed"),
        ("redis", {"CX_REDIS_TLS_CA_FILE": "other"}, "TLS certificate verification failed"),
    ],
)
def test_refused_credentials_and_untrusted_certificates_stop_the_worker_clearly(
        secured: Secured, server: str, change: dict[str, str], message: str) -> None:
    change = {k: str(secured.pki.other_ca) if v == "other" else v for k, v in change.items()}
    ns, extra = secured.namespace(**change)
    stderr = _start_fails(ns, extra)
    assert f"cx-stream: cannot start: {server.capitalize()} at " in stderr
    assert message in stderr
    assert "not-the-password" not in stderr
    assert "retrying" not in stderr  # gave up at the first refusal, did not wait and try again


def test_tools_stop_clearly_on_a_refused_password(secured: Secured, tmp_path: Path) -> None:
    ns, extra = secured.namespace(CX_KAFKA_SASL_PASSWORD="not-the-password")
    events = tmp_path / "events.jsonl"
    events.write_text('{"topic": "call-ended", "raw": "x"}\n')
    done = subprocess.run([sys.executable, "-m", "service", "produce", str(events), "--quiet"],
                          env=ns.env(**extra), capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "cx-stream: cannot start: Kafka at " in done.stderr
    assert "SASL authentication failed" in done.stderr
