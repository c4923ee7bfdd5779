"""Servers with security turned on, for the security tests: certificates made with openssl, a
Kafka broker with a SASL_SSL listener (SCRAM and PLAIN users), a Redis with TLS and an ACL user.

Each runs from the same Kafka jars and Debian redis-server as the normal test stack, on free
loopback ports, in a folder of its own, and is stopped by the fixture that started it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack import ROOT, free_port

KAFKA_USER = "cx-worker"
KAFKA_PASSWORD = "kafka-secret-1"
REDIS_USER = "cx-worker"
REDIS_PASSWORD = "redis-secret-1"
# The command rules docs/security.md recommends (the tests' key prefixes start with "t").
REDIS_ACL = "-@all +@read +@write +@scripting +@transaction +@connection -@dangerous +info"


NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")  # quick to make


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate it signed (for 127.0.0.1 and localhost), a client certificate,
    and a second CA that signed nothing the servers use (an untrusted one)."""

    ca: Path
    server_cert: Path
    server_key: Path
    server_bundle: Path  # key + certificate in one PEM file, as Kafka's PEM keystore wants
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *NEW_KEY, "-nodes", "-days", "2",
                 "-subj", f"/CN=cx-stream test {name}", "-keyout", f"{name}-key.pem",
                 "-out", f"{name}.pem", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                       "extendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *NEW_KEY, "-nodes", "-subj", f"/CN=cx-stream {name}",
                 "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=folder)
    bundle = folder / "server-bundle.pem"
    bundle.write_text((folder / "server-key.pem").read_text() + (folder / "server.pem").read_text())
    return Pki(ca=folder / "ca.pem", server_cert=folder / "server.pem",
               server_key=folder / "server-key.pem", server_bundle=bundle,
               client_cert=folder / "client.pem", client_key=folder / "client-key.pem",
               other_ca=folder / "other-ca.pem")


def _kafka_libs() -> Path:
    cache = Path(os.environ.get("CX_CACHE_DIR", ROOT / ".cx-cache"))
    subprocess.run([str(ROOT / "deploy/local/stack.sh"), "fetch"], check=True,
                   capture_output=True)
    found = sorted(cache.glob("kafka-*/libs/.complete"))
    if not found:
        raise RuntimeError(f"no Kafka jars under {cache}")
    return found[-1].parent


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SecureKafka:
    """A single-node KRaft broker whose client listeners are SASL_SSL (PLAIN, SCRAM-SHA-256 and
    SCRAM-SHA-512, one user) and SSL requiring a client certificate (`mtls_bootstrap`); the
    controller and the broker's own listener stay on loopback PLAINTEXT ports that the tests
    do not use."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.folder = folder
        self.port, self.internal_port, self.controller_port = free_port(), free_port(), free_port()
        self.mtls_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.mtls_bootstrap = f"127.0.0.1:{self.mtls_port}"
        folder.mkdir(parents=True, exist_ok=True)
        jaas = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                f'user_{KAFKA_USER}="{KAFKA_PASSWORD}";')
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props = f"""
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}
listeners=SASL_SSL://127.0.0.1:{self.port},SSL://127.0.0.1:{self.mtls_port},INTERNAL://127.0.0.1:{self.internal_port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{self.port},SSL://127.0.0.1:{self.mtls_port},INTERNAL://127.0.0.1:{self.internal_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
ssl.keystore.type=PEM
ssl.keystore.location={pki.server_bundle}
ssl.truststore.type=PEM
ssl.truststore.location={pki.ca}
ssl.client.auth=none
listener.name.ssl.ssl.client.auth=required
log.dirs={folder}/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
"""
        (folder / "server.properties").write_text(props)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        libs = _kafka_libs()
        java = ["java", "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={ROOT}/deploy/local/kafka/log4j2.yaml",
                "-cp", f"{libs}/*"]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
             "-c", str(self.folder / "server.properties"),
             "--add-scram", f"SCRAM-SHA-256=[name={KAFKA_USER},password={KAFKA_PASSWORD}]",
             "--add-scram", f"SCRAM-SHA-512=[name={KAFKA_USER},password={KAFKA_PASSWORD}]"],
            check=True, capture_output=True,
        )
        log = open(self.folder / "kafka.log", "ab")  # noqa: SIM115 - the broker owns it
        self._proc = subprocess.Popen(
            [*java, "kafka.Kafka", str(self.folder / "server.properties")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("secure Kafka exited during start:\n" + self.logs())
            if "Kafka Server started" in self.logs() and _port_open(self.port):
                return
            time.sleep(0.2)
        raise RuntimeError(f"secure Kafka not started after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return (self.folder / "kafka.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


class SecureRedis:
    """Debian's redis-server listening only with TLS, the default user off, one ACL user."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "redis.conf").write_text(f"""
bind 127.0.0.1
port 0
tls-port {self.port}
tls-cert-file {pki.server_cert}
tls-key-file {pki.server_key}
tls-ca-cert-file {pki.ca}
tls-auth-clients optional
dir {folder}
logfile {folder}/redis.log
save ""
appendonly no
user default off
user {REDIS_USER} on >{REDIS_PASSWORD} ~t* {REDIS_ACL}
""")
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str = REDIS_USER, password: str = REDIS_PASSWORD) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        self._proc = subprocess.Popen(["redis-server", str(self.folder / "redis.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("TLS redis exited during start: "
                                   + (self.folder / "redis.log").read_text(errors="replace"))
            if _port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"TLS redis not listening after {timeout}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
