"""DKIM signing (issue 13, item 8): every message a sender sends is signed when DKIM is configured.

Messages go through the real SMTP sink (aiosmtpd on 127.0.0.1) and every signature the sink received
is verified with dkimpy's `verify`, against a DNS TXT record this test serves (dkimpy's `dnsfunc`),
for RSA and Ed25519 keys; a message altered after signing must fail. The key file is refused at
startup, one line and exit 2, by the commands that send, whatever is wrong with it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.util import parse_tag_value

from mailtower.core.compose import MessageTemplate
from mailtower.core.config import Settings, load_settings
from mailtower.core.dkim_signing import DkimSigner, load_signer
from mailtower.core.errors import UserError
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.tui.handoff import settings_environment
from tests.helpers import Cli, recipients, write_csv

DOMAIN, SELECTOR = "example.org", "mt2026"
FROM = "news@example.org"
PEM = serialization.Encoding.PEM
NO_PASSWORD = serialization.NoEncryption()

# Two primes of 384 bits (a 768-bit RSA key, which cryptography will not generate) and two of 2056
# bits (a 4112-bit key, generated once here rather than for seconds in every run).
P768, Q768 = (
    36447717769181565034591188152848934679209264754709219830168661409250927124900285582166179681364884010688051311999507,
    38676786607482391829355899151471446675095491971047779215145542402468000449386721078808871091683139235674740157476703,
)
P4112 = int(
    "f006bb873ff623ce6f95bf62ae792e2356dde111a333cbe0e349bc135367773e9a9d87a3fde9a628b4ba18b1a1afa17e"
    "90b35702051ecbe07b10b3876cfe1a46bb7d36aec1fae30a5b8912746ccde7f100ccdb79c72c91e65f2fd6ac9b3252f2"
    "76fd00fae4343b9b06577abddfdd16786cde1770233ebd46c7f36fcb1e6e179a19a21de08a8e639821802be5a54bc87e"
    "602330731fc5f671dda131efa823c72ebb84ad36beb854144bbac82a28e98558be5bb9f743fbb9e8eb6d177d598bd657"
    "c1fb4ba98efbba49de3cd07efe6921b434bc2f4ff1538c4f7e4591bac9c8efccc19a68c83d81edf341676660d19dbadb"
    "f00ce8fc924f1469d6c87ade13dfd106ff", 16)
Q4112 = int(
    "dadf9a9c86bbf548b66dc05765a5a1426d2d59b312d7d5ac5f7286a735a426e36953872a1bfc857e058b32f95e82c3fd"
    "2df3de1fb4b6ed97f01e2773a064567d361ce736a78b68f3c2339f61a8c0570d0204716656c3e242415f17cb74e9bc5a"
    "d971b9837178df37ea493026ceeb76dd43d2f29e0ab12833a78689d82cce71e54555e6596cad474f65fc9c4a1a735d84"
    "29dde682c59bc49a52136b4c3f9561bcc675c5bc24ff71384b8ceba579d3cb8cde3f54ef9e95bd5cac2a95397e8192b3"
    "fd8817d6aab71dd5b5e65aa3025c5bd846d4f18bf4e3babfd23fef33a62b6daee19b2544df588948691ec027aa4ec15f"
    "3c41d3ae689536dfe29615186ce7b9ee81", 16)


# ---- keys and the DNS record the test serves --------------------------------------------------------


@dataclass(frozen=True)
class Key:
    path: Path
    algorithm: str  # the dkim_algorithm setting
    record: bytes  # the TXT record at SELECTOR._domainkey.DOMAIN

    def env(self, **more: str) -> dict[str, str]:
        return {"MAILTOWER_DKIM_DOMAIN": DOMAIN, "MAILTOWER_DKIM_SELECTOR": SELECTOR,
                "MAILTOWER_DKIM_KEY_FILE": str(self.path), "MAILTOWER_DKIM_ALGORITHM": self.algorithm, **more}


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def rsa_key(path: Path, private: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat = serialization.PrivateFormat.TraditionalOpenSSL) -> Key:
    """An RSA key file (PKCS#1 "BEGIN RSA PRIVATE KEY" by default) and its record: p= is the
    SubjectPublicKeyInfo, as opendkim and dknewkey publish it."""
    spki = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_file(path, private.private_bytes(PEM, fmt, NO_PASSWORD))
    return Key(path, "rsa-sha256", b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki))


def ed25519_key(path: Path, pem: bool = False) -> Key:
    """An Ed25519 key file, as dkimpy's dknewkey writes it (the base64 of the 32-byte seed) or as
    PKCS#8 PEM, and its record: p= is the raw 32-byte public key (RFC 8463)."""
    private = ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    public = private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    if pem:
        data = private.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD)
    else:
        data = base64.b64encode(private.private_bytes(raw, serialization.PrivateFormat.Raw, NO_PASSWORD)) + b"\n"
    private_file(path, data)
    return Key(path, "ed25519-sha256", b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public))


def served(record: bytes) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: the record at SELECTOR._domainkey.DOMAIN, nothing anywhere else (so s=
    and d= must be right too)."""
    wanted = f"{SELECTOR}._domainkey.{DOMAIN}.".encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == wanted else None

    return dnsfunc


def verifies(message: bytes, key: Key) -> bool:
    return bool(dkim.verify(message, dnsfunc=served(key.record)))


def signature_tags(message: bytes) -> dict[bytes, bytes]:
    headers, _ = dkim.rfc822_parse(message)
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    assert len(values) == 1, f"{len(values)} DKIM-Signature fields"
    return parse_tag_value(values[0])


def signed_names(message: bytes) -> list[bytes]:
    return [name.strip().lower() for name in signature_tags(message)[b"h"].split(b":")]


# ---- sending through the sink -------------------------------------------------------------------------


def new_mailing(cli: Cli, tmp_path: Path, body: Path, n: int, from_addr: str = FROM) -> int:
    rows = [dict(r, code=f"C{i}") for i, r in enumerate(recipients(n))]
    people = write_csv(tmp_path / f"people{n}.csv", rows)
    out = cli.ok("new", "--name", "Signed", "--subject", "Hello {{ name }}", "--from", from_addr,
                 "--text", str(body), "--recipients", str(people), "--now")
    return int(out.strip())


def mailing_state(cli: Cli, mailing_id: int) -> str:
    for section, items in json.loads(cli.ok("status", "--json")).items():
        if section == "senders":  # the fleet (core/fleet.py), not mailings
            continue
        for item in items:
            if item["id"] == mailing_id:
                return str(item["state"])
    raise AssertionError(f"mailing {mailing_id} not in status")


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_every_message_the_sink_receives_carries_a_signature_that_verifies(
    kind: str, tmp_path: Path, body: Path, db: Path, rsa_private: rsa.RSAPrivateKey
) -> None:
    key = rsa_key(tmp_path / "dkim.key", rsa_private) if kind == "rsa" else ed25519_key(tmp_path / "dkim.key")
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port, **key.env())
        new_mailing(cli, tmp_path, body, 12)
        cli.ok("run", "--until-idle")
        deliveries = sink.deliveries
    assert len(deliveries) == 12
    for delivery in deliveries:
        message = delivery.data
        assert message.startswith(b"DKIM-Signature: "), message[:200]
        assert verifies(message, key), message[:600]
        tags = signature_tags(message)
        assert (tags[b"a"], tags[b"d"], tags[b"s"]) == (key.algorithm.encode(), DOMAIN.encode(), SELECTOR.encode())
        names = signed_names(message)
        assert {b"from", b"to", b"subject", b"date", b"message-id"} <= set(names)
        assert names.count(b"from") == 2  # over-signed: a second From added later breaks the signature
        # RFC 8058: List-Unsubscribe and List-Unsubscribe-Post are covered whenever a message has them.
        present = {name.lower() for name, _ in dkim.rfc822_parse(message)[0]}
        assert {b"list-unsubscribe", b"list-unsubscribe-post"} & present <= set(names)
    # Altered after signing, in the body, in a signed header, or by a header added in transit: refused.
    message = deliveries[0].data
    for altered in (
        message.replace(b"your code is", b"your code was", 1),
        re.sub(rb"\r\nSubject: [^\r]*", b"\r\nSubject: You won a prize", message, count=1),
        message.replace(b"\r\nFrom: ", b"\r\nFrom: ceo@example.org\r\nFrom: ", 1),
    ):
        assert altered != message
        assert not verifies(altered, key)


def test_the_key_is_read_once_per_run_not_per_message(
    tmp_path: Path, body: Path, db: Path, rsa_private: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = rsa_key(tmp_path / "dkim.key", rsa_private)
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port, **key.env())
        new_mailing(cli, tmp_path, body, 8)
        for var, value in {**cli.env, **key.env()}.items():
            monkeypatch.setenv(var, value)
        sender = Sender(load_settings({}))
        # Once the sender exists the file no longer matters: garbage in it changes nothing.
        private_file(key.path, b"not a key any more")
        asyncio.run(sender.run(until_idle=True))
        deliveries = sink.deliveries
    assert len(deliveries) == 8
    assert all(verifies(d.data, key) for d in deliveries)


def test_a_from_domain_unrelated_to_d_warns_once(
    tmp_path: Path, body: Path, db: Path, rsa_private: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = rsa_key(tmp_path / "dkim.key", rsa_private)
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port, **key.env())
        new_mailing(cli, tmp_path, body, 5, from_addr="offers@shop.example.net")
        new_mailing(cli, tmp_path, body, 3, from_addr="news@mail.example.org")  # a subdomain of d=: aligned
        for var, value in {**cli.env, **key.env()}.items():
            monkeypatch.setenv(var, value)
        with caplog.at_level(logging.WARNING, logger="mailtower.dkim"):
            asyncio.run(Sender(load_settings({})).run(until_idle=True))
        deliveries = sink.deliveries
    assert len(deliveries) == 8 and all(verifies(d.data, key) for d in deliveries)
    warnings = [r.getMessage() for r in caplog.records if r.name == "mailtower.dkim"]
    assert len(warnings) == 1, warnings
    assert "shop.example.net" in warnings[0] and DOMAIN in warnings[0]


# ---- which header fields are signed ---------------------------------------------------------------------


def rendered_with_unsubscribe() -> bytes:
    """A message as compose renders it, with the RFC 8058 fields a mailing with an unsubscribe
    link carries (added after Message-ID, as compose writes its header block)."""
    template = MessageTemplate.build(mailing_id=7, subject="Spring", from_addr=FROM, text="Hello {{ name }}\n",
                                     html=None, available_fields=())
    message = template.render(recipient_id=3, email="ann@example.com", name="Ann", fields={})
    head, _, rest = message.partition(b"MIME-Version: ")
    unsubscribe = (b"List-Unsubscribe: <https://example.org/u/m7.r3.3f9a>, <mailto:unsubscribe@example.org?subject=m7.r3>\r\n"
                   b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    return head + unsubscribe + b"MIME-Version: " + rest


def signer_for(key: Key, **more: str) -> DkimSigner:
    settings = load_settings({}, environ=key.env(**more), config_path=Path(os.devnull))
    signer = load_signer(settings)
    assert signer is not None
    return signer


@pytest.mark.parametrize("headers", ["", "from:subject:date"])
def test_list_unsubscribe_fields_are_always_signed(headers: str, tmp_path: Path) -> None:
    key = ed25519_key(tmp_path / "ed.key")
    signer = signer_for(key, MAILTOWER_DKIM_HEADERS=headers)
    message = signer.sign(rendered_with_unsubscribe(), FROM)
    assert verifies(message, key)
    names = signed_names(message)
    assert b"list-unsubscribe" in names and b"list-unsubscribe-post" in names
    if headers:
        assert names[:3] == [b"from", b"subject", b"date"] and b"to" not in names
    # The one-click URL cannot be changed, nor a second one added, without breaking the signature.
    assert not verifies(message.replace(b"https://example.org/u/", b"https://evil.example/u/"), key)
    forged = message.replace(b"List-Unsubscribe: ", b"List-Unsubscribe: <https://evil.example/u>\r\nList-Unsubscribe: ", 1)
    assert not verifies(forged, key)


def test_pem_keys_of_both_kinds_a_symlink_and_a_file_named_dash_are_accepted(
    tmp_path: Path, rsa_private: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [
        rsa_key(tmp_path / "pkcs8.pem", rsa_private, serialization.PrivateFormat.PKCS8),
        ed25519_key(tmp_path / "ed.pem", pem=True),
    ]
    linked = tmp_path / "current.key"
    linked.symlink_to(keys[0].path)
    keys.append(Key(linked, keys[0].algorithm, keys[0].record))
    monkeypatch.chdir(tmp_path)  # a key file named "-" is that file, not standard input
    keys.append(ed25519_key(Path("-")))
    for key in keys:
        assert verifies(signer_for(key).sign(rendered_with_unsubscribe(), FROM), key), key.path


# ---- the key file is refused at startup, one line, exit 2 -------------------------------------------


def write_rsa_numbers(path: Path, p: int, q: int) -> None:
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    private_file(path, numbers.private_key().private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD))


def _mode(mode: int) -> Callable[[Path, rsa.RSAPrivateKey], None]:
    def make(path: Path, private: rsa.RSAPrivateKey) -> None:
        rsa_key(path, private)
        path.chmod(mode)
    return make


def _symlink_to_readable(path: Path, private: rsa.RSAPrivateKey) -> None:
    target = rsa_key(path.with_name("shared.key"), private).path
    target.chmod(0o644)
    path.symlink_to(target)


def _other_owner(path: Path, private: rsa.RSAPrivateKey) -> None:
    rsa_key(path, private)
    os.chown(path, 65534, 65534)


BAD_KEY_FILES: dict[str, tuple[Callable[[Path, rsa.RSAPrivateKey], None], str]] = {
    "mode 0644": (_mode(0o644), "group or others may access it (mode 0644); chmod 600 it"),
    "mode 0640": (_mode(0o640), "group or others may access it (mode 0640)"),
    "mode 0606": (_mode(0o606), "group or others may access it (mode 0606)"),
    "mode 0700": (_mode(0o700), "has mode 0700; a key file must be mode 0600 or stricter"),
    "symlink to a readable file": (_symlink_to_readable, "group or others may access it (mode 0644)"),
    "missing": (lambda path, _: None, "does not exist"),
    "directory": (lambda path, _: path.mkdir(mode=0o700), "is a directory, not a key file"),
    "FIFO": (lambda path, _: os.mkfifo(path, 0o600), "is a FIFO, not a regular file"),
    "device": (lambda path, _: path.symlink_to("/dev/zero"), "is a character device, not a regular file"),
    "empty": (lambda path, _: private_file(path, b""), "is empty"),
    "blank": (lambda path, _: private_file(path, b"\n  \n"), "is empty"),
    "huge": (lambda path, _: private_file(path, b"A" * (17 * 1024)), "is 17 KiB; a DKIM private key file is at most 16 KiB"),
    "garbage": (lambda path, _: private_file(path, os.urandom(900)), "is not a private key"),
    "base64 of the wrong length": (lambda path, _: private_file(path, base64.b64encode(b"x" * 31)), "is not a private key"),
    "damaged PEM": (lambda path, _: private_file(path, b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
                    "its PEM rsa private key cannot be read"),
    "public key": (lambda path, private: private_file(path, private.public_key().public_bytes(
        PEM, serialization.PublicFormat.SubjectPublicKeyInfo)), "holds a PEM public key, not a private key"),
    "encrypted": (lambda path, private: private_file(path, private.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))), "encrypted with a passphrase"),
    "ed25519 key with rsa-sha256": (lambda path, _: ed25519_key(path), "holds an Ed25519 key but dkim_algorithm is rsa-sha256"),
    "RSA key with ed25519-sha256": (lambda path, private: rsa_key(path, private),
                                    "holds an RSA key but dkim_algorithm is ed25519-sha256"),
    "EC key": (lambda path, _: private_file(path, ec.generate_private_key(ec.SECP256R1()).private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD)), "holds an elliptic-curve (EC) key"),
    "768-bit RSA": (lambda path, _: write_rsa_numbers(path, P768, Q768), "holds a 768-bit RSA key; DKIM needs at least 1024 bits"),
    "4112-bit RSA": (lambda path, _: write_rsa_numbers(path, P4112, Q4112), "holds a 4112-bit RSA key; receivers need verify only up to 4096"),
}
if os.geteuid() == 0:  # only root can give a file away
    BAD_KEY_FILES["owned by another user"] = (_other_owner, "is owned by uid 65534, not by this user (uid 0)")


@pytest.mark.parametrize("case", sorted(BAD_KEY_FILES))
def test_a_bad_key_file_is_refused_by_run_in_one_line_before_anything_is_sent(
    case: str, tmp_path: Path, body: Path, db: Path, rsa_private: rsa.RSAPrivateKey
) -> None:
    make, reason = BAD_KEY_FILES[case]
    path = tmp_path / "dkim.key"
    make(path, rsa_private)
    algorithm = "ed25519-sha256" if case == "RSA key with ed25519-sha256" else "rsa-sha256"
    with Sink() as sink:
        cli = Cli(db, sink.port, **Key(path, algorithm, b"").env())
        mailing_id = new_mailing(cli, tmp_path, body, 3)
        code, out, err = cli("run", "--until-idle")
        assert code == 2, (code, err)
        assert err.count("\n") == 1 and err.startswith("mailtower: "), err
        assert f"DKIM key file {path}" in err and reason in err, err
        assert sink.deliveries == []
        # Nothing changed: the mailing still waits, and commands that do not send still work.
        assert mailing_state(cli, mailing_id) == "queued"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 0000")
def test_an_unreadable_key_file_is_refused(tmp_path: Path, db: Path, rsa_private: rsa.RSAPrivateKey) -> None:
    key = rsa_key(tmp_path / "dkim.key", rsa_private)
    key.path.chmod(0)
    code, _, err = Cli(db, 2525, **key.env())("run", "--until-idle")
    assert code == 2 and err.count("\n") == 1 and "cannot read" in err and str(key.path) in err, err


def test_the_dashboard_refuses_a_bad_key_before_it_starts(tmp_path: Path, db: Path, rsa_private: rsa.RSAPrivateKey) -> None:
    key = rsa_key(tmp_path / "dkim.key", rsa_private)
    key.path.chmod(0o644)
    proc = Cli(db, 2525, **key.env()).popen(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 2, err
    lines = err.decode().splitlines()
    assert len(lines) == 1 and f"DKIM key file {key.path}: group or others may access it (mode 0644)" in lines[0]
    assert not db.exists()  # refused before the database was even created


def test_a_short_rsa_key_is_accepted_with_a_warning(tmp_path: Path, body: Path, db: Path) -> None:
    key = rsa_key(tmp_path / "dkim.key", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port, **key.env())
        new_mailing(cli, tmp_path, body, 2)
        code, _, err = cli("run", "--until-idle")
        deliveries = sink.deliveries
    assert code == 0, err
    assert "a 1024-bit RSA key; 2048 bits are advised" in err
    assert len(deliveries) == 2 and all(verifies(d.data, key) for d in deliveries)


# ---- the settings ---------------------------------------------------------------------------------------


def load(environ: dict[str, str]) -> Settings:
    return load_settings({}, environ=environ, config_path=Path(os.devnull))


COMPLETE = {"MAILTOWER_DKIM_DOMAIN": DOMAIN, "MAILTOWER_DKIM_SELECTOR": SELECTOR, "MAILTOWER_DKIM_KEY_FILE": "/k"}

BAD_SETTINGS = [
    ({"MAILTOWER_DKIM_DOMAIN": "exa mple.org"}, "MAILTOWER_DKIM_DOMAIN: 'exa mple.org' is not a domain name"),
    ({"MAILTOWER_DKIM_DOMAIN": "-bad.example"}, "is not a domain name"),
    ({"MAILTOWER_DKIM_DOMAIN": "a..b"}, "is not a domain name"),
    ({"MAILTOWER_DKIM_SELECTOR": "sel_1"}, "MAILTOWER_DKIM_SELECTOR: 'sel_1' is not a DKIM selector"),
    ({"MAILTOWER_DKIM_ALGORITHM": "rsa-sha1"}, "must be one of rsa-sha256, ed25519-sha256"),
    ({"MAILTOWER_DKIM_HEADERS": "subject:to"}, "the list must include from"),
    ({"MAILTOWER_DKIM_HEADERS": "from:dkim-signature"}, "dkim-signature must not be signed"),
    ({"MAILTOWER_DKIM_HEADERS": "from:Return-Path"}, "return-path must not be signed"),
    ({"MAILTOWER_DKIM_HEADERS": "from:t\u00e4g"}, "is not a header field name"),
    ({"MAILTOWER_DKIM_HEADERS": "from:" + ":".join(["x"] * 70)}, "at most 64"),
    ({"MAILTOWER_DKIM_KEY_FILE": "/k\x1b[2J"}, "contains a control character"),
    ({**COMPLETE, "MAILTOWER_DKIM_SELECTOR": ""}, "DKIM signing also needs dkim_selector"),
    ({"MAILTOWER_DKIM_SELECTOR": SELECTOR}, "MAILTOWER_DKIM_SELECTOR: DKIM signing also needs dkim_domain"),
    ({**COMPLETE, "MAILTOWER_DKIM_SELECTOR": ".".join(["s" * 60] * 4)}, "longer than 253 characters"),
]


@pytest.mark.parametrize(("environ", "expected"), BAD_SETTINGS)
def test_dkim_settings_are_checked_where_they_enter(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(UserError) as info:
        load(environ)
    assert "\n" not in str(info.value) and expected in str(info.value), str(info.value)


def test_dkim_settings_from_the_toml_file_and_to_a_background_sender(tmp_path: Path) -> None:
    config = tmp_path / "mailtower.toml"
    config.write_text('dkim_domain = "B\u00fccher.Example."\ndkim_selector = "Mail-2026"\n'
                      'dkim_key_file = "~/dkim/key.pem"\ndkim_algorithm = "ed25519-sha256"\n'
                      'dkim_headers = ["From", "Subject", "List-Unsubscribe"]\n', encoding="utf-8")
    settings = load_settings({}, environ={}, config_path=config)
    assert settings.dkim_domain == "xn--bcher-kva.example" and settings.dkim_selector == "mail-2026"
    assert settings.dkim_key_file == str(Path("~/dkim/key.pem").expanduser())
    assert (settings.dkim_algorithm, settings.dkim_headers) == ("ed25519-sha256", "from:subject:list-unsubscribe")
    # A background sender gets the same DKIM settings through its environment.
    child = load(settings_environment(settings))
    names = ("dkim_domain", "dkim_selector", "dkim_key_file", "dkim_algorithm", "dkim_headers")
    assert [getattr(child, n) for n in names] == [getattr(settings, n) for n in names]
    # Without DKIM, a child is not given a half configuration.
    plain = load(settings_environment(load({})))
    assert (plain.dkim_domain, plain.dkim_key_file) == ("", "") and load_signer(plain) is None
    bad = tmp_path / "bad.toml"
    for value, shown in (('["from", 3]', "3"), ('["from", "list unsubscribe"]', "'list unsubscribe'")):
        bad.write_text(f"dkim_headers = {value}\n", encoding="utf-8")
        with pytest.raises(UserError, match=rf"dkim_headers: {shown} is not a header name"):
            load_settings({}, environ={}, config_path=bad)
