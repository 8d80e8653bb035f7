"""Tests for pds.repo.keys and signing_keys: signing, verification, did:key/multikey, key files."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from multiformats import multibase, multicodec

from pds.repo.keys import (
    LEGACY_K256_TYPE,
    LEGACY_P256_TYPE,
    P256_N,
    SECP256K1_N,
    InvalidKey,
    K256PublicKey,
    P256PublicKey,
    b58decode,
    b58encode,
    parse_did_key,
    parse_legacy_multibase,
    parse_multikey,
    public_key_from_verification_method,
)
from pds.repo.signing_keys import (
    K256PrivateKey,
    P256PrivateKey,
    PrivateKey,
    export_private_key,
    generate_signing_key,
    load_private_key,
)

CURVES: list[tuple[type[PrivateKey], int]] = [
    (K256PrivateKey, SECP256K1_N),
    (P256PrivateKey, P256_N),
]
CURVE_IDS = ["k256", "p256"]


def b64_unpadded(text: str) -> bytes:
    """Decode the vectors' unpadded standard base64."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def load_json(interop: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((interop / "crypto" / name).read_text())


def compact(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# ---------------------------------------------------------------------------------- vectors


def test_signature_fixtures(interop: Path) -> None:
    cases = load_json(interop, "signature-fixtures.json")
    assert len(cases) == 6
    for case in cases:
        message = b64_unpadded(case["messageBase64"])
        sig = b64_unpadded(case["signatureBase64"])
        from_did = parse_did_key(case["publicKeyDid"])
        from_legacy = parse_legacy_multibase(case["publicKeyMultibase"], case["didDocSuite"])
        from_vm = public_key_from_verification_method(
            {
                "id": "#atproto",
                "type": case["didDocSuite"],
                "controller": "did:example:x",
                "publicKeyMultibase": case["publicKeyMultibase"],
            }
        )
        # All three encodings name the same key.
        assert from_did == from_legacy == from_vm, case["comment"]
        assert from_did.did_key() == case["publicKeyDid"]
        assert from_did.jwt_alg == case["algorithm"]
        for key in (from_did, from_legacy, from_vm):
            assert key.verify(message, sig) is case["validSignature"], case["comment"]


def test_signature_fixture_rejections_are_about_encoding(interop: Path) -> None:
    """The high-S and DER vectors carry genuine signatures; only their form is wrong."""
    for case in load_json(interop, "signature-fixtures.json"):
        message = b64_unpadded(case["messageBase64"])
        sig = b64_unpadded(case["signatureBase64"])
        key = parse_did_key(case["publicKeyDid"])
        order = SECP256K1_N if key.jwt_alg == "ES256K" else P256_N
        if "high-s" in case["tags"]:
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            assert s > order // 2
            assert key.verify(message, compact(r, order - s))
        if "der-encoded" in case["tags"]:
            r, s = decode_dss_signature(sig)
            s = min(s, order - s)
            assert key.verify(message, compact(r, s))


def test_w3c_didkey_k256(interop: Path) -> None:
    cases = load_json(interop, "w3c_didkey_K256.json")
    assert len(cases) == 5
    for case in cases:
        sk = K256PrivateKey.from_bytes(bytes.fromhex(case["privateKeyBytesHex"]))
        pk = sk.public_key()
        assert isinstance(pk, K256PublicKey)
        assert pk.did_key() == case["publicDidKey"]
        parsed = parse_did_key(case["publicDidKey"])
        assert parsed == pk
        assert parsed.did_key() == case["publicDidKey"]
        assert parsed.compressed() == pk.compressed()


def test_w3c_didkey_p256(interop: Path) -> None:
    cases = load_json(interop, "w3c_didkey_P256.json")
    assert len(cases) == 1
    for case in cases:
        sk = P256PrivateKey.from_bytes(b58decode(case["privateKeyBytesBase58"]))
        pk = sk.public_key()
        assert isinstance(pk, P256PublicKey)
        assert pk.did_key() == case["publicDidKey"]
        parsed = parse_did_key(case["publicDidKey"])
        assert parsed == pk
        assert parsed.did_key() == case["publicDidKey"]


# ------------------------------------------------------------------------ sign / verify


@pytest.mark.parametrize(("cls", "order"), CURVES, ids=CURVE_IDS)
def test_sign_verify_round_trip(cls: type[PrivateKey], order: int) -> None:
    rng = random.Random(1234)
    sk = cls.generate()
    pk = sk.public_key()
    for _ in range(200):
        message = rng.randbytes(rng.randrange(0, 300))
        sig = sk.sign(message)
        assert len(sig) == 64
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        assert 0 < r < order
        assert 0 < s <= order // 2
        assert pk.verify(message, sig)

        bit = rng.randrange(64 * 8)
        flipped = bytearray(sig)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not pk.verify(message, bytes(flipped))
        if message:
            altered = bytearray(message)
            altered[rng.randrange(len(altered))] ^= 1 << rng.randrange(8)
            assert not pk.verify(bytes(altered), sig)

        # The malleable twin is mathematically valid but must be refused.
        assert not pk.verify(message, compact(r, order - s))
        assert not pk.verify(message, encode_dss_signature(r, s))


@pytest.mark.parametrize(("cls", "order"), CURVES, ids=CURVE_IDS)
def test_verify_never_raises(cls: type[PrivateKey], order: int) -> None:
    sk = cls.generate()
    pk = sk.public_key()
    sig = sk.sign(b"msg")
    r = int.from_bytes(sig[:32], "big")
    bad: list[Any] = [
        b"",
        sig[:63],
        sig + b"\0",
        bytes(64),
        compact(0, 1),
        compact(r, 0),
        compact(order, 1),
        b"\xff" * 64,
        None,
        "not bytes",
        12345,
    ]
    for candidate in bad:
        assert pk.verify(b"msg", candidate) is False
    assert pk.verify(b"msg", bytearray(sig)) is True
    assert pk.verify(b"msg", memoryview(sig)) is True
    other = cls.generate().public_key()
    assert other.verify(b"msg", sig) is False


def test_cross_curve_signature_rejected() -> None:
    k_sig = K256PrivateKey.generate().sign(b"x")
    p_key = P256PrivateKey.generate().public_key()
    assert p_key.verify(b"x", k_sig) is False


# ------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(("cls", "order"), CURVES, ids=CURVE_IDS)
def test_did_key_matches_multiformats(cls: type[PrivateKey], order: int) -> None:
    """multiformats is an independent implementation of multicodec + multibase."""
    codec = {"ES256K": "secp256k1-pub", "ES256": "p256-pub"}
    for _ in range(20):
        pk = cls.generate().public_key()
        expected = multibase.encode(
            multicodec.wrap(codec[pk.jwt_alg], pk.compressed()), "base58btc"
        )
        assert pk.multibase() == expected
        assert pk.did_key() == "did:key:" + expected
        assert len(pk.compressed()) == 33
        assert parse_multikey(expected) == pk
        prefix = "zQ3s" if pk.jwt_alg == "ES256K" else "zDnae"
        assert expected.startswith(prefix)


def test_base58_against_multiformats() -> None:
    rng = random.Random(99)
    samples = [b"", b"\0", b"\0\0\x01", b"\xff" * 40] + [
        b"\0" * rng.randrange(3) + rng.randbytes(rng.randrange(60)) for _ in range(300)
    ]
    for data in samples:
        encoded = b58encode(data)
        assert "z" + encoded == multibase.encode(data, "base58btc")
        assert b58decode(encoded) == data


@pytest.mark.parametrize(("cls", "order"), CURVES, ids=CURVE_IDS)
def test_legacy_uncompressed_and_verification_methods(cls: type[PrivateKey], order: int) -> None:
    sk = cls.generate()
    pk = sk.public_key()
    legacy_type = LEGACY_K256_TYPE if pk.jwt_alg == "ES256K" else LEGACY_P256_TYPE
    uncompressed = _uncompressed(sk)
    assert len(uncompressed) == 65 and uncompressed[0] == 4
    legacy = "z" + b58encode(uncompressed)
    assert parse_legacy_multibase(legacy, legacy_type) == pk
    vm = {"id": "#atproto", "type": legacy_type, "publicKeyMultibase": legacy}
    assert public_key_from_verification_method(vm) == pk
    vm = {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": pk.multibase()}
    assert public_key_from_verification_method(vm) == pk
    sig = sk.sign(b"doc")
    assert public_key_from_verification_method(vm).verify(b"doc", sig)


def _uncompressed(sk: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    curve = ec.SECP256K1() if sk.jwt_alg == "ES256K" else ec.SECP256R1()
    point = ec.EllipticCurvePublicKey.from_encoded_point(curve, sk.public_key().compressed())
    return point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def test_parse_did_key_is_cached() -> None:
    did = K256PrivateKey.generate().public_key().did_key()
    assert parse_did_key(did) is parse_did_key(did)


def test_keys_hashable_and_equal() -> None:
    sk = K256PrivateKey.generate()
    a = sk.public_key()
    b = parse_did_key(a.did_key())
    assert a == b and hash(a) == hash(b)
    assert a != P256PrivateKey.generate().public_key()
    assert sk.to_bytes().hex() not in repr(sk)


# --------------------------------------------------------------------------- key files


@pytest.mark.parametrize(("cls", "order"), CURVES, ids=CURVE_IDS)
def test_export_load_round_trip(cls: type[PrivateKey], order: int) -> None:
    sk = cls.generate()
    data = export_private_key(sk)
    assert data.startswith(sk.key_type.encode() + b":") and data.endswith(b"\n")
    assert len(data) == 4 + 1 + 64 + 1
    loaded = load_private_key(data)
    assert type(loaded) is cls
    assert loaded.to_bytes() == sk.to_bytes()
    assert loaded.public_key() == sk.public_key()
    assert sk.public_key().verify(b"m", loaded.sign(b"m"))
    # Surrounding whitespace is fine; the raw-bytes constructor also round-trips.
    assert load_private_key(b"  " + data.strip() + b"\r\n").to_bytes() == sk.to_bytes()
    assert cls.from_bytes(sk.to_bytes()).public_key() == sk.public_key()


def test_generate_signing_key_defaults_to_k256() -> None:
    assert isinstance(generate_signing_key(), K256PrivateKey)
    assert isinstance(generate_signing_key("p256"), P256PrivateKey)
    with pytest.raises(InvalidKey):
        generate_signing_key("ed25519")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"k256",
        b"k256:",
        b"ed25519:" + b"11" * 32,
        b"K256:" + b"11" * 32,
        b"k256:" + b"11" * 31,
        b"k256:" + b"11" * 33,
        b"k256:" + b"1g" * 32,
        b"k256:" + b"11 " * 21 + b"1",
        b"k256:" + b"00" * 32,
        b"k256:" + SECP256K1_N.to_bytes(32, "big").hex().encode(),
        b"p256:" + P256_N.to_bytes(32, "big").hex().encode(),
        b"k256:" + "\u00e9".encode() * 32,
        b"\xff\xfe",
    ],
)
def test_load_private_key_rejects(data: bytes) -> None:
    with pytest.raises(InvalidKey):
        load_private_key(data)


@pytest.mark.parametrize("cls", [K256PrivateKey, P256PrivateKey], ids=CURVE_IDS)
def test_from_bytes_rejects(cls: type[PrivateKey]) -> None:
    for raw in (b"", bytes(31), bytes(33), bytes(32), b"\xff" * 32):
        with pytest.raises(InvalidKey):
            cls.from_bytes(raw)


@pytest.mark.parametrize(
    "did",
    [
        "",
        "did:key:",
        "did:key:z",
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "did:web:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        # base58 alphabet excludes 0, O, I and l.
        "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJw0",
        "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwl",
        # multibase base58flickr / base64 prefixes are not did:key.
        "did:key:ZQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        "did:key:mQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        # truncated / extended point.
        "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJ",
        "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwcc",
        "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc#frag",
    ],
)
def test_parse_did_key_rejects(did: str) -> None:
    with pytest.raises(InvalidKey):
        parse_did_key(did)


def _multikey(prefix: bytes, point: bytes) -> str:
    return "z" + b58encode(prefix + point)


def test_parse_multikey_rejects_structural_errors() -> None:
    pk = K256PrivateKey.generate().public_key()
    point = pk.compressed()
    # ed25519-pub (0xED 0x01) is a real multicodec but not an atproto signing key.
    with pytest.raises(InvalidKey):
        parse_multikey(_multikey(b"\xed\x01", bytes(32)))
    # Right codec but the point is truncated, or uncompressed (did:key requires compressed).
    with pytest.raises(InvalidKey):
        parse_multikey(_multikey(b"\xe7\x01", point[:32]))
    with pytest.raises(InvalidKey):
        parse_multikey(_multikey(b"\xe7\x01", _uncompressed_k256(point)))
    # Bad SEC1 tag bytes (hybrid 0x06 and garbage 0x05).
    with pytest.raises(InvalidKey):
        parse_multikey(_multikey(b"\xe7\x01", b"\x05" + point[1:]))
    with pytest.raises(InvalidKey):
        parse_multikey(_multikey(b"\x80\x24", b"\x06" + point[1:]))
    # A well-formed compressed encoding whose x has no point on the curve.
    not_on_curve = _first_x_not_on_curve()
    with pytest.raises(InvalidKey):
        parse_multikey(_multikey(b"\xe7\x01", b"\x02" + not_on_curve))
    for bad in (None, 5, b"zQ3s"):
        with pytest.raises(InvalidKey):
            parse_multikey(bad)  # type: ignore[arg-type]


def _uncompressed_k256(compressed: bytes) -> bytes:
    import coincurve

    return coincurve.PublicKey(compressed).format(compressed=False)


def _first_x_not_on_curve() -> bytes:
    """Smallest x for which x^3 + 7 is a non-residue mod p on secp256k1."""
    p = 2**256 - 2**32 - 977
    x = 1
    while pow((x**3 + 7) % p, (p - 1) // 2, p) == 1:
        x += 1
    return x.to_bytes(32, "big")


def test_parse_legacy_multibase_rejects() -> None:
    pk = P256PrivateKey.generate().public_key()
    good = "z" + b58encode(pk.compressed())
    assert parse_legacy_multibase(good, LEGACY_P256_TYPE) == pk
    with pytest.raises(InvalidKey):
        parse_legacy_multibase(good, "Ed25519VerificationKey2020")
    with pytest.raises(InvalidKey):
        parse_legacy_multibase(good[1:], LEGACY_P256_TYPE)  # missing 'z'
    with pytest.raises(InvalidKey):
        parse_legacy_multibase("z" + b58encode(pk.compressed()[:-1]), LEGACY_P256_TYPE)
    with pytest.raises(InvalidKey):
        parse_legacy_multibase(pk.multibase(), LEGACY_P256_TYPE)  # has a multicodec prefix


@pytest.mark.parametrize(
    "vm",
    [
        {},
        {"type": "Multikey"},
        {"type": "Multikey", "publicKeyMultibase": 7},
        {"type": "Multikey", "publicKeyMultibase": "zzz0"},
        {"type": "JsonWebKey2020", "publicKeyMultibase": "zQ3s"},
        {"type": LEGACY_K256_TYPE, "publicKeyHex": "02" + "11" * 32},
        [],
        None,
    ],
)
def test_verification_method_rejects(vm: Any) -> None:
    with pytest.raises(InvalidKey):
        public_key_from_verification_method(vm)


def test_invalid_key_is_value_error() -> None:
    assert issubclass(InvalidKey, ValueError)
    with pytest.raises(ValueError):
        parse_did_key("did:key:nope")
