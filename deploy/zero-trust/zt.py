#!/usr/bin/env python3
"""Helpers of deploy/zero-trust/up.sh.

  zt.py certs DIR [NODES]         a CA, each node's certificate (node-<id>.pem: localhost,
                                  127.0.0.1 and node-<id>, the name node-to-node mTLS
                                  checks) and client certificates for admin, alice and bob
  zt.py setup DIR BOOTSTRAP       as the bootstrap admin: SCRAM-SHA-512 users alice and bob,
                                  topic `payments`, alice's grants; writes DIR/alice.properties
                                  and DIR/bob.properties

Needs `cryptography` (a dependency of moto) and `confluent-kafka` (scripts/install-test-deps.sh
installs both).
"""

import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path


def certs(d: Path, nodes: int = 1):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Shale zero-trust example CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name, subject, usage, dns=("localhost",)):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if ExtendedKeyUsageOID.SERVER_AUTH in usage:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k = d / f"{name}.key"
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        k.chmod(0o600)

    # One certificate per node, for its client listener (localhost) and for node-to-node
    # mTLS (node-<id>: a peer is accepted only as the node its certificate names).
    for i in range(1, nodes + 1):
        leaf(f"node-{i}", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node-{i}"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "nodes")]),
             [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
             dns=("localhost", f"node-{i}"))
    for user in ("admin", "alice", "bob"):
        leaf(user, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user),
                              x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "clients")]),
             [ExtendedKeyUsageOID.CLIENT_AUTH])


def setup(d: Path, bootstrap: str):
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       NewTopic, ResourcePatternType, ResourceType,
                                       ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)

    admin_password = (d / "admin.password").read_text().strip()
    tls = {"ssl.ca.location": str(d / "ca.pem")}
    admin = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL",
                         "sasl.mechanism": "PLAIN", "sasl.username": "admin",
                         "sasl.password": admin_password, **tls,
                         "ssl.certificate.location": str(d / "admin.pem"),
                         "ssl.key.location": str(d / "admin.key")})
    passwords = {u: secrets.token_urlsafe(18) for u in ("alice", "bob")}
    for user, f in admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion(u, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                         p.encode()) for u, p in passwords.items()]).items():
        f.result(30)
    fs = admin.create_topics([NewTopic("payments", 3, 1)])
    try:
        fs["payments"].result(30)
    except Exception as e:  # already there from an earlier run of the same DIR
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise
    grants = [AclBinding(ResourceType.TOPIC, "payments", ResourcePatternType.LITERAL, "User:alice",
                         "*", op, AclPermissionType.ALLOW)
              for op in (AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE)]
    grants.append(AclBinding(ResourceType.GROUP, "payments-app", ResourcePatternType.LITERAL,
                             "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW))
    for f in admin.create_acls(grants).values():
        f.result(30)
    for user, password in passwords.items():
        props = d / f"{user}.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(d / "ca.pem"),
            "ssl.certificate.location": str(d / f"{user}.pem"),
            "ssl.key.location": str(d / f"{user}.key"),
        }.items()))
        props.chmod(0o600)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "certs":
        certs(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) >= 4 else 1)
    elif len(sys.argv) >= 4 and sys.argv[1] == "setup":
        setup(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)
