"""One-click unsubscribe (issue 13, item 7): List-Unsubscribe headers on messages a real SMTP sink
receives, tokens that `unsubscribe verify` checks and `suppress import` takes back, and the warning
for large mailings without it."""

from __future__ import annotations

import base64
import json
import re
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from mailtower.core.errors import UserError
from mailtower.core.sink import Sink
from mailtower.core.unsubscribe import make_token, read_token
from tests.helpers import Cli, recipients, write_csv
from tests.pg_server import connect

@pytest.fixture
def db(db_target):
    """Every test here that takes `db` runs on SQLite and on PostgreSQL (issue 15)."""
    return db_target


URL = "https://example.org/unsubscribe/{{ unsubscribe_token }}?l=1"
SECRET = bytes(range(32))


def new_mailing(cli: Cli, tmp_path: Path, body: Path, n: int, *extra: str) -> tuple[int, int, str]:
    people = write_csv(tmp_path / "p.csv", [dict(r, code="x") for r in recipients(n)])
    code, out, err = cli(
        "new", "--name", "news", "--subject", "Hi", "--from", "news@example.org",
        "--text", str(body), "--recipients", str(people), *extra,
    )
    return code, int(out) if code == 0 else 0, err


def mailings(db: Path) -> list[tuple]:
    if isinstance(db, Path) and not db.exists():
        return []
    with connect(db) as conn:
        return conn.execute("SELECT id, unsubscribe_url, unsubscribe_mailto FROM mailings").fetchall()


def test_token_round_trip_and_any_change_is_refused() -> None:
    token = make_token(SECRET, 42, "ann@example.com")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    found = read_token(SECRET, token)
    assert (found.mailing_id, found.address) == (42, "ann@example.com")
    with pytest.raises(UserError, match="signature"):
        read_token(bytes(32), token)  # another database's secret
    for index in range(len(token)):  # every single-character change
        changed = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
        with pytest.raises(UserError):
            read_token(SECRET, changed)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[8] ^= 1  # the mailing id, the MAC left as it was
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(UserError, match="signature"):
        read_token(SECRET, forged)
    for junk in ("", "x", "%%%", "A" * 5000, token + "=", "AAAA"):
        with pytest.raises(UserError):
            read_token(SECRET, junk)


def headers_of(message: Message) -> tuple[str, str | None]:
    unfolded = re.sub(r"\r?\n[ \t]", " ", str(message["List-Unsubscribe"]))
    return unfolded, message["List-Unsubscribe-Post"]


def test_messages_carry_list_unsubscribe_with_verifiable_tokens(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port)
        code, mailing_id, err = new_mailing(
            cli, tmp_path, body, 5, "--now", "--unsubscribe-url", URL, "--unsubscribe-mailto", "leave@example.org")
        assert code == 0, err
        cli.ok("run", "--until-idle")
        deliveries = sink.deliveries
    assert len(deliveries) == 5
    tokens = []
    for delivery in deliveries:
        message = message_from_bytes(delivery.data)
        header, post = headers_of(message)
        match = re.fullmatch(
            r"<https://example\.org/unsubscribe/([A-Za-z0-9_-]+)\?l=1>, "
            r"<mailto:leave@example\.org\?subject=unsubscribe%20([A-Za-z0-9_-]+)>", header)
        assert match, header
        assert match.group(1) == match.group(2)
        assert post == "List-Unsubscribe=One-Click"
        assert max(len(line) for line in delivery.data.split(b"\r\n\r\n")[0].split(b"\r\n")) <= 998
        out = cli.ok("unsubscribe", "verify", match.group(1))
        assert out == f"{mailing_id}\t{delivery.recipient}\n"
        tokens.append(match.group(1))
    assert len(set(tokens)) == 5

    # The endpoint's collected tokens come back as unsubscribes; junk in the file is skipped.
    collected = tmp_path / "collected.txt"
    collected.write_text(f"{tokens[0]}\n{tokens[3]}\nnot-a-token\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(collected))
    assert code == 0 and f"{collected}:3:" in err and "2 from unsubscribe tokens" in err
    listed = {d["email"]: d for d in map(json.loads, cli.ok("suppress", "list", "--json").splitlines())}
    assert set(listed) == {deliveries[0].recipient, deliveries[3].recipient}
    assert {d["source"] for d in listed.values()} == {"unsubscribe"}
    assert f"mailing {mailing_id}" in listed[deliveries[0].recipient]["reason"]


def test_mailto_only_has_no_one_click_header(tmp_path: Path, body: Path, db: Path) -> None:
    with Sink(keep_messages=True) as sink:
        cli = Cli(db, sink.port)
        code, mailing_id, err = new_mailing(cli, tmp_path, body, 1, "--unsubscribe-mailto", "mailto:Leave@Example.org")
        assert code == 0, err
        cli.ok("send-now", str(mailing_id))
        cli.ok("run", "--until-idle")
        message = message_from_bytes(sink.deliveries[0].data)
    header, post = headers_of(message)
    assert header.startswith("<mailto:Leave@example.org?subject=unsubscribe%20") and post is None


def test_without_options_no_header(cli: Cli, sink: Sink, tmp_path: Path, body: Path) -> None:
    sink.handler.keep_messages = True
    code, _, err = new_mailing(cli, tmp_path, body, 1, "--now")
    assert code == 0, err
    cli.ok("run", "--until-idle")
    assert b"List-Unsubscribe" not in sink.deliveries[0].data


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--unsubscribe-url", "http://example.org/u/{{ unsubscribe_token }}", "https"),
        ("--unsubscribe-url", "https://example.org/u/", "unsubscribe_token"),
        ("--unsubscribe-url", "https://example.org/u/{{ unsubscribe_token }}/{{ name }}", "only"),
        ("--unsubscribe-url", "https://example.org/u/{{ unsubscribe_token }}>, <https://evil", "angle bracket"),
        ("--unsubscribe-url", "https://example.org/u/{{ unsubscribe_token }}\r\nBcc: x@evil", "control"),
        ("--unsubscribe-url", "https:///{{ unsubscribe_token }}", "host"),
        ("--unsubscribe-url", "https://exämple.org/{{ unsubscribe_token }}", "ASCII"),
        ("--unsubscribe-url", "https://example.org/" + "a" * 1000 + "{{ unsubscribe_token }}", "longer"),
        ("--unsubscribe-mailto", "not an address", "not a valid address"),
    ],
)
def test_bad_unsubscribe_options_change_nothing(cli: Cli, tmp_path: Path, body: Path, flag: str, value: str, says: str) -> None:
    code, _, err = new_mailing(cli, tmp_path, body, 2, "--now", flag, value)
    assert code == 2 and flag in err and says in err and len(err.strip().splitlines()) == 1
    assert mailings(cli.db) == []


def test_unsubscribe_verify_refuses_bad_tokens_in_one_line(cli: Cli) -> None:
    for token in ("garbage!", "AQAAAAAAAAAB" + "A" * 40, ""):
        code, out, err = cli("unsubscribe", "verify", token)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "token" in err


def test_unsubscribe_set_on_a_draft_and_refused_while_current(cli: Cli, tmp_path: Path, body: Path) -> None:
    code, mailing_id, _ = new_mailing(cli, tmp_path, body, 2)
    cli.ok("unsubscribe", "set", str(mailing_id), "--url", URL)
    assert mailings(cli.db) == [(mailing_id, URL, None)]
    cli.ok("send-now", str(mailing_id))
    code, _, err = cli("unsubscribe", "set", str(mailing_id), "--none")
    assert code == 2 and "queued" in err
    assert mailings(cli.db) == [(mailing_id, URL, None)]


def test_large_mailing_without_unsubscribe_warns_once(cli: Cli, tmp_path: Path, body: Path) -> None:
    code, first, err = new_mailing(cli, tmp_path, body, 5000, "--now")
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert code == 0 and len(warnings) == 1 and "unsubscribe" in warnings[0] and "5,000" in warnings[0]
    code, second, err = new_mailing(cli, tmp_path, body, 5000)
    assert "warning" not in err  # a draft goes nowhere yet
    code, _, err = cli("schedule", str(second), "--at", "2099-01-01 09:00", "--tz", "UTC")
    assert code == 0 and sum("warning" in line and "unsubscribe" in line for line in err.splitlines()) == 1
    code, third, err = new_mailing(cli, tmp_path, body, 5000, "--now", "--unsubscribe-url", URL)
    assert code == 0 and "warning" not in err
    code, small, err = new_mailing(cli, tmp_path, body, 4999, "--now")
    assert code == 0 and "warning" not in err
