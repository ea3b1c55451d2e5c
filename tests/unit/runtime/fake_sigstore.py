"""A Sigstore instance in a test: a Fulcio-like CA, a CT log and a Rekor-like log, each
just a key made here, and the bundles they would produce, so that offline Sigstore
verification (trust root from a file) runs for real without any network.

What a real instance does and this one mimics, per the formats sigstore-python 4.5.1
verifies: the CA issues a short-lived certificate with the signer's identity (SAN) and
OIDC issuer (extension 1.3.6.1.4.1.57264.1.1) and an embedded SCT (RFC 6962, precert
entry) signed by the CT log; the log records a dsse/0.0.1 entry and returns a signed
entry timestamp (SET) and an inclusion proof with a signed checkpoint (a one-leaf tree
here). Nothing of this is used outside tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

OIDC_ISSUER_OID = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
SCT_LIST_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
ORIGIN = "rekor.kustos.test - 1"
DSSE_TYPE = "application/vnd.in-toto+json"


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x04" + length + data


@dataclass
class Instance:
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    ct_key: ec.EllipticCurvePrivateKey
    log_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls) -> Instance:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "kustos.test"),
                          x509.NameAttribute(x509.NameOID.COMMON_NAME, "fulcio.kustos.test")])
        now = datetime.now(UTC)
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(days=30))
              .not_valid_after(now + timedelta(days=365))
              .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
              .add_extension(x509.KeyUsage(
                  digital_signature=False, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=True,
                  crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA384()))
        return cls(ca_key, ca, ec.generate_private_key(ec.SECP256R1()),
                   ec.generate_private_key(ec.SECP256R1()))

    def trusted_root(self) -> dict[str, Any]:
        """The instance as a Sigstore TrustedRoot (what trusted_root.json holds)."""
        start = {"start": "2020-01-01T00:00:00Z"}

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_spki(key.public_key())),
                                  "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": start},
                    "logId": {"keyId": _b64(_key_id(key.public_key()))}}

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.log_key, "https://rekor.kustos.test")],
            "ctlogs": [log(self.ct_key, "https://ctlog.kustos.test")],
            "certificateAuthorities": [{
                "subject": {"organization": "kustos.test", "commonName": "fulcio.kustos.test"},
                "uri": "https://fulcio.kustos.test",
                "certChain": {"certificates": [
                    {"rawBytes": _b64(self.ca.public_bytes(serialization.Encoding.DER))}]},
                "validFor": start}],
            "timestampAuthorities": [],
        }

    def issue(self, key: ec.EllipticCurvePrivateKey, identity: str, issuer: str,
              not_before: datetime, minutes: int = 10) -> x509.Certificate:
        """A Fulcio-style certificate with an SCT embedded (signed over the precert)."""
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_before + timedelta(minutes=minutes))
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]),
                           critical=True)
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_OID, issuer.encode()),
                           critical=False))
        tbs = builder.sign(self.ca_key, hashes.SHA384()).tbs_certificate_bytes
        millis = int(not_before.timestamp() * 1000) + 1000
        signed = struct.pack(f"!BBQH32sBBB{len(tbs)}sH", 0, 0, millis, 1,
                             _key_id(self.ca.public_key()),  # type: ignore[arg-type]
                             *len(tbs).to_bytes(3, "big"), tbs, 0)
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (struct.pack("!B32sQH", 0, _key_id(self.ct_key.public_key()), millis, 0)
               + struct.pack("!BBH", 4, 3, len(sig)) + sig)
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        return builder.add_extension(
            x509.UnrecognizedExtension(SCT_LIST_OID, _der_octet_string(sct_list)),
            critical=False).sign(self.ca_key, hashes.SHA384())

    def bundle(self, payload: bytes, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
               integrated: datetime) -> dict[str, Any]:
        """A Sigstore v0.3 bundle: the DSSE envelope of ``payload`` signed with ``key``,
        ``cert``, and a log entry integrated at ``integrated``."""
        pae = f"DSSEv1 {len(DSSE_TYPE)} {DSSE_TYPE} {len(payload)} ".encode() + payload
        sig = key.sign(pae, ec.ECDSA(hashes.SHA256()))
        envelope = {"payload": _b64(payload), "payloadType": DSSE_TYPE,
                    "signatures": [{"sig": _b64(sig)}]}
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = json.dumps({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256",
                             "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [{"signature": _b64(sig), "verifier": _b64(pem)}]}}).encode()
        log_id = _key_id(self.log_key.public_key())
        root = hashlib.sha256(b"\x00" + body).digest()  # a one-leaf tree: the leaf is the root
        note = f"{ORIGIN}\n1\n{_b64(root)}\n"
        note_sig = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = note + f"\n\u2014 {ORIGIN.split()[0]} {_b64(log_id[:4] + note_sig)}\n"
        when = int(integrated.timestamp())
        set_ = self.log_key.sign(rfc8785.dumps({
            "body": _b64(body), "integratedTime": when, "logID": log_id.hex(), "logIndex": 0}),
            ec.ECDSA(hashes.SHA256()))
        return {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [{
                    "logIndex": "0", "logId": {"keyId": _b64(log_id)},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": str(when),
                    "inclusionPromise": {"signedEntryTimestamp": _b64(set_)},
                    "inclusionProof": {"logIndex": "0", "rootHash": _b64(root), "treeSize": "1",
                                       "hashes": [], "checkpoint": {"envelope": checkpoint}},
                    "canonicalizedBody": _b64(body)}]},
            "dsseEnvelope": envelope,
        }


def model_statement(model: Path, scratch: Path) -> bytes:
    """The in-toto statement model_signing signs for ``model`` (taken from a bundle that
    model_signing itself writes with a throwaway key)."""
    import model_signing

    key = ec.generate_private_key(ec.SECP256R1())
    pem = scratch / "throwaway.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    out = scratch / "throwaway.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=pem).sign(model, out)  # type: ignore[no-untyped-call]
    return base64.b64decode(json.loads(out.read_text())["dsseEnvelope"]["payload"])
