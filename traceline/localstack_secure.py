"""The secured local broker (``traceline stack up --secure``): what a plant's cluster looks like.

* **SASL_SSL** on the client listener, SCRAM-SHA-512 (credentials in the KRaft metadata, added
  when the storage is formatted), TLS with a certificate signed by a CA generated here
  (``keytool``, from the JDK the broker runs on; SAN ``127.0.0.1`` / ``localhost``, checked by
  every client). The controller listener is SASL_PLAINTEXT (PLAIN, KRaft controllers cannot use
  SCRAM) on loopback, as the ``admin`` principal.
* **ACLs** through KRaft's ``StandardAuthorizer``, nothing allowed without one
  (``allow.everyone.if.no.acl.found=false``), **no topic auto-creation**:

  ============  ===============================================================================
  principal     may
  ============  ===============================================================================
  ``admin``     everything (super user: the broker itself, ACL and user administration)
  ``pipeline``  all on topics and consumer groups named ``<prefix>*`` (``traceline`` by default:
                the events topic, traceline's own topics, the faust worker's internal ones):
                serve, sink, alert engine, worker, CLI
  ``gateway``   write and describe the events topic, nothing else: benches, PLC and ERP gateways
  ============  ===============================================================================

Everything secret lives in ``<kafka data dir>/secure/`` (0700; files 0600): the passwords
(``credentials.json``), the key stores, and one env file per principal (``pipeline.env``,
``gateway.env``) with the ``TRACELINE_KAFKA_*`` settings a client of that principal needs. The
CA certificate (``ca.pem``) is what clients trust.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from schemas.errors import TracelineError
from schemas.kafka import KafkaSecurity

__all__ = ["SecureMaterial", "SecureStackError", "prepare", "load", "broker_config", "scram_args", "grant"]

SECURE_DIR = "secure"
USERS = ("admin", "pipeline", "gateway")
MECHANISM = "SCRAM-SHA-512"
DEFAULT_PREFIX = "traceline"


class SecureStackError(TracelineError):
    """The secured local broker could not be set up (certificates, users or ACLs)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class SecureMaterial:
    """The secrets of one secured local broker, under ``dir``."""

    dir: Path
    passwords: dict[str, str]  # admin, pipeline, gateway, and "store" (the key stores')

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.dir / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.dir / "truststore.p12"

    def security(self, user: str) -> KafkaSecurity:
        """The client security of ``user`` (``admin``, ``pipeline`` or ``gateway``)."""
        return KafkaSecurity("SASL_SSL", MECHANISM, user, self.passwords[user], self.ca_file)

    def env_file(self, user: str) -> Path:
        return self.dir / f"{user}.env"


def _private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by the owner only (created so: never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def load(kafka_dir: Path) -> SecureMaterial | None:
    """The material of a secured broker in ``kafka_dir``, None when it is not a secured one."""
    d = Path(kafka_dir) / SECURE_DIR
    creds = d / "credentials.json"
    if not creds.is_file():
        return None
    return SecureMaterial(d, json.loads(creds.read_text()))


def _keytool(keytool: str, *args: str) -> None:
    done = subprocess.run([keytool, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SecureStackError(f"keytool {args[0]} failed: {(done.stderr or done.stdout).strip()[-800:]}")


def prepare(kafka_dir: Path, keytool: str) -> SecureMaterial:
    """Passwords, a CA, the broker's certificate and key stores, and the clients' env files
    (made once; a second call returns what is there)."""
    have = load(kafka_dir)
    if have is not None and have.keystore.is_file() and have.ca_file.is_file():
        return have
    d = Path(kafka_dir) / SECURE_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    passwords = {u: secrets.token_hex(16) for u in (*USERS, "store")}
    m = SecureMaterial(d, passwords)
    pw = passwords["store"]
    ca, csr, cert = d / "ca.p12", d / "broker.csr", d / "broker.pem"
    for p in (ca, m.keystore, m.truststore, m.ca_file, csr, cert):
        p.unlink(missing_ok=True)
    common = ("-storetype", "PKCS12", "-storepass", pw)
    _keytool(keytool, "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
             "-dname", "CN=traceline local CA", "-ext", "bc:c", "-validity", "825",
             "-keystore", str(ca), "-keypass", pw, *common)  # fmt: skip
    _keytool(
        keytool, "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), "-file", str(m.ca_file), *common
    )
    _keytool(keytool, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
             "-dname", "CN=localhost", "-validity", "825", "-keystore", str(m.keystore), "-keypass", pw,
             *common)  # fmt: skip
    _keytool(
        keytool, "-certreq", "-alias", "broker", "-keystore", str(m.keystore), "-file", str(csr), *common
    )
    _keytool(keytool, "-gencert", "-alias", "ca", "-keystore", str(ca), "-infile", str(csr),
             "-outfile", str(cert), "-rfc", "-validity", "825", "-ext", "SAN=ip:127.0.0.1,dns:localhost",
             "-ext", "KU=digitalSignature,keyEncipherment", "-ext", "EKU=serverAuth,clientAuth",
             *common)  # fmt: skip
    _keytool(keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(m.ca_file),
             "-keystore", str(m.keystore), *common)  # fmt: skip
    _keytool(keytool, "-importcert", "-noprompt", "-alias", "broker", "-file", str(cert),
             "-keystore", str(m.keystore), *common)  # fmt: skip
    _keytool(keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(m.ca_file),
             "-keystore", str(m.truststore), *common)  # fmt: skip
    for p in (ca, m.keystore, m.truststore, csr, cert):
        os.chmod(p, 0o600)
    os.chmod(m.ca_file, 0o644)  # public: what clients trust
    for user in ("pipeline", "gateway"):
        sec = m.security(user)
        _private(
            m.env_file(user),
            f"# the Kafka client settings of the {user} principal (secret: keep this file 0600)\n"
            f"TRACELINE_KAFKA_SECURITY_PROTOCOL={sec.protocol}\n"
            f"TRACELINE_KAFKA_SASL_MECHANISM={sec.mechanism}\n"
            f"TRACELINE_KAFKA_SASL_USERNAME={user}\n"
            f"TRACELINE_KAFKA_SASL_PASSWORD={passwords[user]}\n"
            f"TRACELINE_KAFKA_SSL_CA_FILE={m.ca_file}\n",
        )
    _private(d / "credentials.json", json.dumps(passwords, indent=2))  # last: marks it complete
    return m


def broker_config(m: SecureMaterial, broker_port: int, controller_port: int, host: str) -> str:
    """Lines appended to ``server.properties`` (later keys win over the template's)."""
    admin, store = m.passwords["admin"], m.passwords["store"]
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return "\n".join(
        [
            "",
            "############################# Secured (stack up --secure) #############################",
            f"listeners=SASL_SSL://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=SASL_SSL://{host}:{broker_port}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f'listener.name.controller.plain.sasl.jaas.config={plain} required username="admin" '
            f'password="{admin}" user_admin="{admin}";',
            f'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram} required username="admin" '
            f'password="{admin}";',
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={m.keystore}",
            f"ssl.keystore.password={store}",
            f"ssl.key.password={store}",
            "ssl.truststore.type=PKCS12",
            f"ssl.truststore.location={m.truststore}",
            f"ssl.truststore.password={store}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:admin",
            "allow.everyone.if.no.acl.found=false",
            "auto.create.topics.enable=false",
            "",
        ]
    )


def scram_args(m: SecureMaterial) -> list[str]:
    """The storage tool's ``--add-scram`` arguments: every principal's SCRAM credential."""
    out: list[str] = []
    for user in USERS:
        out += ["--add-scram", f"{MECHANISM}=[name={user},password={m.passwords[user]}]"]
    return out


def acls(events_topic: str, prefix: str = DEFAULT_PREFIX) -> list[AclBinding]:
    """The bindings of the table in the module doc."""

    def allow(
        rtype: ResourceType, name: str, pattern: ResourcePatternType, who: str, op: AclOperation
    ) -> AclBinding:
        return AclBinding(rtype, name, pattern, f"User:{who}", "*", op, AclPermissionType.ALLOW)

    prefixed, literal = ResourcePatternType.PREFIXED, ResourcePatternType.LITERAL
    return [
        allow(ResourceType.TOPIC, prefix, prefixed, "pipeline", AclOperation.ALL),
        allow(ResourceType.GROUP, prefix, prefixed, "pipeline", AclOperation.ALL),
        allow(ResourceType.TRANSACTIONAL_ID, prefix, prefixed, "pipeline", AclOperation.ALL),
        allow(ResourceType.TOPIC, events_topic, literal, "gateway", AclOperation.WRITE),
        allow(ResourceType.TOPIC, events_topic, literal, "gateway", AclOperation.DESCRIBE),
    ]


def grant(bootstrap: str, m: SecureMaterial, events_topic: str, prefix: str = DEFAULT_PREFIX) -> None:
    """Create the ACLs (idempotent: an existing binding is left as it is)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **m.security("admin").librdkafka(), "log_level": 3})
    for binding, fut in admin.create_acls(acls(events_topic, prefix), request_timeout=30).items():
        try:
            fut.result(30)
        except Exception as exc:  # noqa: BLE001 - any failure: the stack is not secured as promised
            raise SecureStackError(f"cannot create the ACL {binding}: {exc}") from exc
