"""Agent signatures wrapped in PKCS#7 / CMS SignedData (spec: agent-protocol.md §3.1, command 2).

Windows agents that keep their key in the OS certificate store send, instead of a raw RSA
signature, a detached PKCS#7 SignedData blob signing ``M_a = Hweb ‖ Ns ‖ Na``. MeshCentral tells
the two apart by length (raw = 256 or 384 bytes; anything else is tried as PKCS#7, then as raw)
and verifies the embedded signature directly over ``M_a``, which is only right when the blob has
no signed attributes. Here the caller decides "raw" by the key's modulus size, and this module
handles both CMS forms:

* no signed attributes: the RSA signature covers ``M_a`` itself;
* signed attributes: their ``messageDigest`` must equal SHA-384(``M_a``), and the RSA signature
  covers the DER of the attributes as a ``SET OF`` (RFC 5652 §5.4).

Exactly one SignerInfo is accepted; its digest algorithm must be SHA-384 and its signature
algorithm RSA (``rsaEncryption`` or ``sha384WithRSAEncryption``). The result is plain bytes for
an RSA-PKCS#1-v1.5-SHA-384 verification, so it can run in a worker like a raw signature.
"""

from __future__ import annotations

import hashlib
import hmac

from meshd.agent._der import (
    CONTEXT_0,
    OCTET_STRING,
    OID,
    SEQUENCE,
    SET,
    DerError,
    Tlv,
    children,
    expect,
    read_tlv,
)

__all__ = ["Pkcs7Error", "signed_payload"]

# DER contents of the object identifiers used below.
_OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2
_OID_MESSAGE_DIGEST = bytes.fromhex("2a864886f70d010904")  # 1.2.840.113549.1.9.4
_OID_SHA384 = bytes.fromhex("608648016503040202")  # 2.16.840.1.101.3.4.2.2
_OID_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_OID_SHA384_RSA = bytes.fromhex("2a864886f70d01010c")  # 1.2.840.113549.1.1.12


class Pkcs7Error(ValueError):
    """The blob is not a SignedData this server accepts for ``message``."""


def _oid(buf: bytes, item: Tlv, what: str) -> bytes:
    expect(item, OID, what)
    return buf[item.body : item.end]


def _algorithm(buf: bytes, item: Tlv, what: str) -> bytes:
    parts = children(buf, expect(item, SEQUENCE, what))
    if not parts:
        raise DerError(f"{what}: empty AlgorithmIdentifier")
    return _oid(buf, parts[0], what)


def _signed_payload(blob: bytes, message: bytes) -> tuple[bytes, bytes]:
    content_info = expect(read_tlv(blob, 0, len(blob)), SEQUENCE, "ContentInfo")
    if content_info.end != len(blob):
        raise DerError("trailing bytes after ContentInfo")
    parts = children(blob, content_info)
    if len(parts) != 2 or _oid(blob, parts[0], "contentType") != _OID_SIGNED_DATA:
        raise DerError("not a SignedData ContentInfo")
    wrapper = children(blob, expect(parts[1], CONTEXT_0, "content"))
    if len(wrapper) != 1:
        raise DerError("bad [0] content wrapper")
    signed_data = children(blob, expect(wrapper[0], SEQUENCE, "SignedData"))
    # version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos
    if len(signed_data) < 4:
        raise DerError("SignedData too short")
    signer_infos = children(blob, expect(signed_data[-1], SET, "signerInfos"))
    if len(signer_infos) != 1:
        raise DerError("exactly one SignerInfo is required")
    fields = children(blob, expect(signer_infos[0], SEQUENCE, "SignerInfo"))
    # version, sid, digestAlgorithm, [0] signedAttrs?, signatureAlgorithm, signature, [1]?
    if len(fields) < 5:
        raise DerError("SignerInfo too short")
    if _algorithm(blob, fields[2], "digestAlgorithm") != _OID_SHA384:
        raise DerError("digest algorithm is not SHA-384")
    index = 3
    attributes = None
    if fields[index].tag == CONTEXT_0:
        attributes = fields[index]
        index += 1
    if len(fields) < index + 2:
        raise DerError("SignerInfo too short")
    if _algorithm(blob, fields[index], "signatureAlgorithm") not in (_OID_RSA, _OID_SHA384_RSA):
        raise DerError("signature algorithm is not RSA")
    signature_item = expect(fields[index + 1], OCTET_STRING, "signature")
    signature = blob[signature_item.body : signature_item.end]
    if not signature:
        raise DerError("empty signature")
    if attributes is None:
        return message, signature
    digest = None
    for attribute in children(blob, attributes):
        pair = children(blob, expect(attribute, SEQUENCE, "Attribute"))
        if len(pair) != 2:
            raise DerError("bad Attribute")
        if _oid(blob, pair[0], "attrType") != _OID_MESSAGE_DIGEST:
            continue
        if digest is not None:
            raise DerError("two messageDigest attributes")
        values = children(blob, expect(pair[1], SET, "attrValues"))
        if len(values) != 1:
            raise DerError("messageDigest must have one value")
        value = expect(values[0], OCTET_STRING, "messageDigest")
        digest = blob[value.body : value.end]
    if digest is None:
        raise DerError("signed attributes without messageDigest")
    if not hmac.compare_digest(digest, hashlib.sha384(message).digest()):
        raise DerError("messageDigest does not match the signed message")
    # The signature covers the attributes re-tagged as a SET OF (0x31 instead of [0] 0xA0).
    return bytes((SET,)) + blob[attributes.start + 1 : attributes.end], signature


def signed_payload(blob: bytes, message: bytes) -> tuple[bytes, bytes]:
    """From a detached SignedData ``blob`` over ``message``, return ``(signed bytes, signature)``.

    The caller then checks RSA-PKCS#1-v1.5-SHA-384 ``signature`` over ``signed bytes`` with the
    node certificate's key. Raises :class:`Pkcs7Error` for anything else.
    """
    try:
        return _signed_payload(blob, message)
    except DerError as error:
        raise Pkcs7Error(str(error)) from None
