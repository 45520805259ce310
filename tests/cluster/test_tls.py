"""TLS between the daemon and the Dask cluster (``daemon.executor.security``): a CA and
certificates made here, a scheduler and a worker that require them, one attempt through the
executor, and a client without a certificate refused."""

from __future__ import annotations

import datetime
import uuid

import pytest

from .processes import DaskCluster, need_dask
from .stages import behaving


def make_pki(root) -> dict[str, dict[str, str]]:
    """A CA, and a key and certificate it signed for the cluster and one for the daemon; and
    another CA with a certificate of its own (a stranger's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name, key, issuer, issuer_key, ca):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer or subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                             x509.IPAddress(__import__("ipaddress")
                                                            .ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def write(name, obj) -> str:
        path = root / name
        if isinstance(obj, x509.Certificate):
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            path.chmod(0o600)
        return str(path)

    out = {}
    for ca_name, whos in (("ca", ("cluster", "daemon")), ("other-ca", ("stranger",))):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = cert(f"ahgd test {ca_name}", ca_key, None, None, True)
        ca_file = write(f"{ca_name}.pem", ca)
        for who in whos:
            key = ec.generate_private_key(ec.SECP256R1())
            out[who] = {"ca_file": ca_file,
                        "cert": write(f"{who}.pem", cert(who, key, ca.subject, ca_key, False)),
                        "key": write(f"{who}.key", key)}
    return out


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, s3):
    need_dask()
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root)
    found = DaskCluster(root / "dask", workers=1, tls=pki["cluster"])
    yield found, pki
    found.stop()


def test_an_attempt_runs_over_tls_and_a_client_without_a_certificate_is_refused(
        tls_cluster, s3, tmp_path):
    from distributed import Client
    from distributed.security import Security

    from pipelines.execution.cluster import DaskExecutor
    from pipelines.execution.clusterlink import ClusterUnavailable, connect
    from pipelines.execution.remote import versions
    from pipelines.execution.runner import StageTask

    cluster, pki = tls_cluster
    assert cluster.address.startswith("tls://")
    ex = DaskExecutor(cluster.address, object_store=s3.settings(uuid.uuid4().hex[:8]),
                      security=pki["daemon"], owner=f"test:{tmp_path}", connect_timeout=5)
    try:
        outcome = ex.submit(behaving(tmp_path / "state"), StageTask(
            "rt", "behaving", "work", 1, str(tmp_path / "state"), {"do": "rows"}, {}, (), {},
            None, {}, timeout=60)).result(timeout=60)
        assert outcome.ok and outcome.worker and outcome.worker.startswith("tls://"), outcome
        assert outcome.output["uri"].startswith("s3://")
    finally:
        ex.shutdown()
    # a client without TLS, and one whose certificate another CA signed, are refused
    stranger = pki["stranger"]
    for address, security in ((cluster.address.replace("tls://", "tcp://"), None), (
            cluster.address, Security(tls_ca_file=stranger["ca_file"], require_encryption=True,
                                      tls_client_cert=stranger["cert"],
                                      tls_client_key=stranger["key"]))):
        with pytest.raises((OSError, TimeoutError)):
            Client(address, timeout=2, set_as_default=False, security=security)
    # the daemon configured without `security:`, or with a certificate of another CA, is
    # refused, saying what is wrong and what to do
    with pytest.raises(ClusterUnavailable) as refused:
        DaskExecutor(cluster.address, object_store=s3.settings("x"), connect_timeout=3,
                     owner=f"test:{tmp_path}").shutdown()
    assert "has no security section: add security:" in str(refused.value), refused.value
    with pytest.raises(ClusterUnavailable) as refused:  # the executor logs it, and retries
        connect(cluster.address, pki["stranger"], 2, versions(), "test", {})
    assert "signed by the CA the scheduler and workers trust" in str(refused.value)
