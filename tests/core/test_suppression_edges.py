"""Hostile edges of suppression and one-click unsubscribe (issue 13, items 6 and 7), found in review.

Real parts only: a real SMTP sink (core/sink.py) on 127.0.0.1, real SQLite files, the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from mailtower.core.errors import UserError
from mailtower.core.sink import Sink
from mailtower.core.unsubscribe import check_url
from tests.helpers import Cli, recipients, wait_until, write_csv
from tests.pg_server import connect


def new_mailing(cli: Cli, tmp_path: Path, body: Path, n: int, *extra: str, name: str = "news") -> int:
    people = write_csv(tmp_path / f"{name}.csv", [dict(r, code="x") for r in recipients(n)])
    code, out, err = cli(
        "new", "--name", name, "--subject", "Hi {{ name }}", "--from", "news@example.org",
        "--text", str(body), "--recipients", str(people), *extra,
    )
    assert code == 0, err
    return int(out)


def row_states(db: Path, mailing_id: int) -> dict[str, str]:
    with connect(db) as conn:
        return dict(conn.execute("SELECT email, state FROM recipients WHERE mailing_id = ?", (mailing_id,)))


def counters(db: Path, mailing_id: int) -> tuple:
    with connect(db) as conn:
        return conn.execute(
            "SELECT state, total, sent, failed, suppressed, in_doubt FROM mailings WHERE id = ?", (mailing_id,)
        ).fetchone()


# ---- the suppression check while a mailing is sending ------------------------------------------


def test_an_address_suppressed_while_sending_is_not_sent_after_the_add_commits(tmp_path: Path, body: Path, db_target: Path) -> None:
    """The sender holds claimed rows in memory ahead of its connections; an address suppressed
    after its row was claimed but before it is sent must not be sent (the `sending` mark is
    where the decision is made, in the same transaction order as the `suppress add`)."""
    held, release = threading.Event(), threading.Event()

    def fault(stage: str, address: str, attempt: int) -> str | None:
        if stage == "rcpt" and address == "user0@example.com":
            held.set()
            release.wait(20)  # bounded: the sink answers the first recipient once the test says so
        return None

    with Sink(fault=fault) as sink:
        cli = Cli(db_target, sink.port, MAILTOWER_SMTP_CONNECTIONS="1")  # both engines (issue 15)
        mailing_id = new_mailing(cli, tmp_path, body, 10, "--now")
        runner = cli.popen("run", "--until-idle", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(held.is_set, what="the first message to reach RCPT")
            # Every row is claimed by now (one batch holds all ten); two of them are suppressed.
            cli.ok("suppress", "add", "user5@example.com", "USER9@example.com")
            release.set()
            _, err = runner.communicate(timeout=60)
            assert runner.returncode == 0, err.decode()
            # Every account of the run counts the two (8 + 2 = 10), not only the ledger.
            assert "8 sent, 0 failed, 2 skipped as suppressed" in err.decode()
        finally:
            release.set()
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        received = sink.received()
    assert "user5@example.com" not in received and "user9@example.com" not in received
    assert len(received) == 8
    states = row_states(cli.db, mailing_id)
    assert states["user5@example.com"] == states["user9@example.com"] == "suppressed"
    assert counters(cli.db, mailing_id) == ("completed", 10, 8, 0, 2, 0)
    doc = json.loads(cli.ok("status", "--json"))["inactive"][0]
    assert (doc["remaining"], doc["failed"], doc["sent"], doc["suppressed"]) == (0, 0, 8, 2)
    with connect(cli.db) as conn:
        (completed,) = conn.execute("SELECT detail FROM events WHERE mailing_id = ? AND kind = 'completed'", (mailing_id,)).fetchone()
    assert completed == "8 sent, 0 failed, 2 suppressed"


# ---- the unsubscribe URL template --------------------------------------------------------------

SLOT = "{{ unsubscribe_token }}"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"https://{SLOT}.example.org/u", "path or query"),  # the host: lower-cased, 63-octet labels, no `_`
        (f"https://x{SLOT}y.example.org:443/u", "path or query"),
        (f"https://{SLOT}@example.org/u", "path or query"),  # the user part
        (f"https://user:{SLOT}@example.org/u", "path or query"),
        (f"https://example.org/u#{SLOT}", "never sent"),  # a fragment is not POSTed
        (f"https://example.org/u?a=1#t={SLOT}", "never sent"),
        (f"https://example.org:99999/{SLOT}", "not a URL"),
        (f"https://example.org:https/{SLOT}", "not a URL"),
        (f"https://example.org/a,b/{SLOT}", "comma"),  # splits the target list for naive parsers
        (f"https://example.org/{SLOT},<mailto:evil@example.net>", "comma"),
        ("https://example.org/" + "a" * 700 + SLOT, "too long"),  # fits MAX_URL, not a header line
        (f"https://example.org/{SLOT}" * 3, "too long"),  # three tokens of up to 542 characters
        (f"https://example.org\\@evil.example.net/{SLOT}", "backslash"),  # two readers, two hosts
        (f"https://example.org/a|b^c`d/{SLOT}", "backslash"),  # not URI characters (RFC 3986)
        (f"https://example.org/100%/{SLOT}", "two hex digits"),
        (f"https://example.org/%zz/{SLOT}", "two hex digits"),
    ],
    ids=["host", "host-part", "user", "password", "fragment", "fragment-after-query", "port-range", "port-name",
         "comma", "comma-target", "line-too-long", "three-tokens", "backslash", "not-uri-chars", "percent", "percent-hex"],
)
def test_unsubscribe_urls_that_cannot_work_are_refused(cli: Cli, tmp_path: Path, body: Path, url: str, says: str) -> None:
    people = write_csv(tmp_path / "p.csv", [dict(r, code="x") for r in recipients(2)])
    code, _, err = cli("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                       "--recipients", str(people), "--now", "--unsubscribe-url", url)
    assert code == 2 and "--unsubscribe-url" in err and says in err and len(err.strip().splitlines()) == 1, err
    assert not cli.db.exists() or sqlite3.connect(cli.db).execute("SELECT COUNT(*) FROM mailings").fetchone() == (0,)
    draft = new_mailing(cli, tmp_path, body, 2)
    code, _, err = cli("unsubscribe", "set", str(draft), "--url", url)
    assert code == 2 and "--url" in err and says in err and len(err.strip().splitlines()) == 1, err


def test_the_longest_accepted_url_fits_a_header_line_for_the_longest_address(tmp_path: Path, body: Path) -> None:
    """The URL check bounds the line the longest token makes, not only the template."""
    longest = next(  # bounded: at most 1000 tries, the first that the check accepts
        url for n in range(1000, 0, -1)
        if _accepted(url := "https://example.org/" + "a" * n + "/" + SLOT)
    )
    local, domain = "a" * 64, "b" * 63 + "." + "c" * 63 + "." + "d" * 49 + ".example.com"
    address = f"{local}@{domain}"
    assert len(address) == 254
    people = write_csv(tmp_path / "long.csv", [{"email": address, "code": "x"}, {"email": "Ann@Example.com", "code": "y"}])
    with Sink(keep_messages=True) as sink:
        cli = Cli(tmp_path / "l.db", sink.port)
        cli.ok("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
               "--recipients", str(people), "--now", "--unsubscribe-url", longest,
               "--unsubscribe-mailto", "unsubscribe@example.org")
        cli.ok("run", "--until-idle")
        assert len(sink.deliveries) == 2
        for delivery in sink.deliveries:
            lines = delivery.data.split(b"\r\n") if b"\r\n" in delivery.data else delivery.data.split(b"\n")
            assert max(len(line) for line in lines) <= 998
            head = delivery.data.split(b"\r\n\r\n")[0].decode()
            token = head.split(longest.split(SLOT)[0])[1].split(">")[0]
            assert cli.ok("unsubscribe", "verify", token).split("\t")[1].strip() == delivery.recipient.lower()


def _accepted(url: str) -> bool:
    try:
        check_url(url)
    except UserError:
        return False
    return True


# ---- suppress import: hostile files --------------------------------------------------------------


def suppressed_keys(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {k for (k,) in conn.execute("SELECT key FROM suppression")}


def test_import_lines_end_at_lf_so_junk_is_one_line_and_numbers_are_right(cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_bytes(
        "g@example.com\x0bh@example.com\r\n"  # VT: one line of junk, not two addresses
        "i@example.com\u2028j@example.com\r\n"  # LINE SEPARATOR: the same
        "k@example.com\x0cl@example.com\x1cm@example.com\x85n@example.com\n"
        "ok@example.com\r\n".encode()
    )
    code, _, err = cli("suppress", "import", str(junk))
    assert code == 0, err
    assert [line.split(": ")[0] for line in err.splitlines()[:3]] == [f"{junk}:1", f"{junk}:2", f"{junk}:3"]
    assert "suppressed 1 address (3 lines not valid, skipped)" in err
    assert suppressed_keys(cli.db) == {"ok@example.com"}


def test_a_comment_with_a_comma_does_not_make_a_list_a_csv_file(cli: Cli, tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("# unsubscribes, from the web form\n\nann@example.com\n# more, later\nbob@example.com\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(listed))
    assert code == 0 and "suppressed 2 addresses" in err, err
    csv_with_comment = tmp_path / "people.csv"
    csv_with_comment.write_text("# exported, 2026-11-30\nname,email\nCy,cy@example.com\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(csv_with_comment))
    assert code == 0 and "suppressed 1 address" in err, err
    assert suppressed_keys(cli.db) == {"ann@example.com", "bob@example.com", "cy@example.com"}


def test_the_database_and_its_files_are_never_imported(cli: Cli, tmp_path: Path) -> None:
    cli.ok("suppress", "add", "seed@example.com")
    (tmp_path / "link.db").symlink_to(cli.db)
    # (a hard link to a database is refused when it is opened, before any command runs)
    for name in (str(cli.db), str(tmp_path / "link.db"), str(tmp_path / "." / ".." / tmp_path.name / cli.db.name)):
        code, _, err = cli("suppress", "import", name)
        assert code == 2 and "is the database" in err and len(err.strip().splitlines()) == 1, err
    assert suppressed_keys(cli.db) == {"seed@example.com"}


def test_a_huge_line_is_reported_in_a_short_line(cli: Cli, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("x" * 2_000_000 + "@example.com\n" + "@" * 1_000_000 + "\nok@example.com\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(big))
    assert code == 0 and "suppressed 1 address" in err
    assert max(len(line) for line in err.splitlines()) < 400 and "2,000,012 characters" in err
    broken_csv = tmp_path / "big.csv"
    broken_csv.write_text("name,email\nA,a@example.com\nB," + "b" * 200_000 + "\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(broken_csv))
    assert code == 2 and f"{broken_csv}: line 3:" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("suppress", "add", "ok2@example.com", "--reason", "\x1b" + "r" * 100_000)
    assert code == 2 and "--reason" in err and len(err) < 400


def test_the_default_reason_names_the_file_safely(cli: Cli, tmp_path: Path) -> None:
    hostile = tmp_path / "list\x1b]0;owned\x07\u202e.txt"
    hostile.write_text("ann@example.com\n", encoding="utf-8")
    cli.ok("suppress", "import", str(hostile))
    with sqlite3.connect(cli.db) as conn:
        (reason,) = conn.execute("SELECT reason FROM suppression").fetchone()
    assert reason.isprintable() and "\\x1b" in reason and "\\u202e" in reason


# ---- the unsubscribe mailto address ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("unsub@bücher.example.com", "unsub@xn--bcher-kva.example.com"),
        ("unsub@xn--bcher-kva.example.com", "unsub@xn--bcher-kva.example.com"),  # the validator gives Unicode back
        ("mailto:unsub@faß.example.com", "unsub@xn--fa-hia.example.com"),  # IDNA 2008: not "fass"
    ],
)
def test_an_internationalised_mailto_domain_is_stored_in_its_ascii_form(
    cli: Cli, tmp_path: Path, body: Path, given: str, stored: str
) -> None:
    draft = new_mailing(cli, tmp_path, body, 2)
    cli.ok("unsubscribe", "set", str(draft), "--mailto", given)
    with sqlite3.connect(cli.db) as conn:
        assert conn.execute("SELECT unsubscribe_mailto FROM mailings WHERE id = ?", (draft,)).fetchone() == (stored,)
    code, _, err = cli("unsubscribe", "set", str(draft), "--mailto", "ünsub@example.com")
    assert code == 2 and "--mailto" in err and "ASCII" in err and len(err.strip().splitlines()) == 1


# ---- DKIM covers the List-Unsubscribe fields the header hook really writes ------------------------


def test_dkim_covers_the_folded_list_unsubscribe_of_a_real_mailing(tmp_path: Path, body: Path) -> None:
    """test_dkim checks the h= list on a hand-made message; here the real hook's folded field (URL
    and mailto on two lines) goes through the sender, and a changed target breaks the signature."""
    import dkim

    from tests.core.test_dkim import FROM, ed25519_key, signed_names, verifies

    key = ed25519_key(tmp_path / "dkim.key")
    with Sink(keep_messages=True) as sink:
        cli = Cli(tmp_path / "d.db", sink.port, **key.env())
        people = write_csv(tmp_path / "p.csv", [dict(r, code="x") for r in recipients(3)])
        cli.ok("new", "--name", "n", "--subject", "s", "--from", FROM, "--text", str(body), "--recipients", str(people),
               "--now", "--unsubscribe-url", f"https://example.org/u?t={SLOT}", "--unsubscribe-mailto", "leave@example.org")
        cli.ok("run", "--until-idle")
        deliveries = list(sink.deliveries)
    assert len(deliveries) == 3
    for delivery in deliveries:
        message = delivery.data
        fields = {name.lower(): value for name, value in dkim.rfc822_parse(message)[0]}
        assert b"\r\n <mailto:leave@example.org?subject=unsubscribe%20" in fields[b"list-unsubscribe"]
        assert verifies(message, key)
        names = signed_names(message)
        assert b"list-unsubscribe" in names and b"list-unsubscribe-post" in names
        swapped = message.replace(b"<https://example.org/u?t=", b"<https://evil.example.net/u?t=", 1)
        assert swapped != message and not verifies(swapped, key)
        no_one_click = message.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b"", 1)
        assert no_one_click != message and not verifies(no_one_click, key)


async def test_a_mark_bars_a_suppressed_row_once_and_again_if_it_is_marked_again(tmp_path: Path, db_target: Path) -> None:
    """The store's side of the check: a marked row on the list becomes `suppressed`, counted once;
    marked again (its connection gave it back for another to take), it is barred again, not
    counted again, and never `sending`."""
    from mailtower.core.store import open_store
    from tests.helpers import sending_mailing

    store = await open_store(db_target)  # both engines (issue 15)
    try:
        mailing_id, claimed, _ = await sending_mailing(store, tmp_path / "p.csv", 4, 10)
        assert len(claimed) == 4
        async with store.write() as tx:
            await tx.add_suppressions([("user2@example.com", "user2@example.com")], "manual", "")
        for _ in range(2):
            barred: set[int] = set()
            _, mailing = await store.record_and_claim(mailing_id, [], 0, marks=[c.id for c in claimed], barred=barred)
            assert barred == {claimed[2].id}
            assert (mailing.suppressed, mailing.remaining) == (1, 3)
    finally:
        await store.close()
    assert row_states(db_target, mailing_id) == {
        "user0@example.com": "sending", "user1@example.com": "sending",
        "user2@example.com": "suppressed", "user3@example.com": "sending"}


# ---- keys: the same normalisation as the importer, end to end ---------------------------------------


def test_unicode_and_idn_addresses_are_suppressed_under_the_importers_key(tmp_path: Path, body: Path) -> None:
    """An unsubscribe token taken back, and `suppress add` in another spelling (upper case,
    decomposed accents, the xn-- form of the domain), bar the very recipients the importer keyed."""
    import unicodedata

    people = write_csv(tmp_path / "p.csv", [
        {"email": "Uni@Bücher.example.com", "code": "a"},  # unsubscribes with its token (sent with the xn-- domain)
        {"email": "ÅSA@example.com", "code": "b"},  # suppressed by hand, spelt otherwise
        {"email": "Info@Example.com", "code": "c"},  # a role mailbox (the validator lower-cases it)
        {"email": "plain@example.com", "code": "d"},
    ])
    with Sink(keep_messages=True) as sink:
        cli = Cli(tmp_path / "k.db", sink.port)
        cli.ok("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--text", str(body),
               "--recipients", str(people), "--now", "--unsubscribe-url", f"https://example.org/u/{SLOT}")
        cli.ok("run", "--until-idle")
        by_recipient = {d.recipient: d.data for d in sink.deliveries}
    data = next(v for k, v in by_recipient.items() if k.lower().startswith("uni@"))
    token = data.split(b"<https://example.org/u/")[1].split(b">")[0].decode()
    (tmp_path / "tokens.txt").write_text(f"{token}\n", encoding="utf-8")
    cli.ok("suppress", "import", str(tmp_path / "tokens.txt"))
    cli.ok("suppress", "add", unicodedata.normalize("NFD", "åsa@EXAMPLE.com"), "INFO@example.COM")
    again = write_csv(tmp_path / "again.csv", [
        {"email": "UNI@xn--bcher-kva.example.com", "code": "a"},
        {"email": "åsa@example.com", "code": "b"},
        {"email": "info@example.com", "code": "c"},
        {"email": "plain@example.com", "code": "d"},
    ])
    code, out, err = cli("new", "--name", "again", "--subject", "s", "--from", "news@example.org", "--text", str(body),
                         "--recipients", str(again))
    assert code == 0 and "3 suppressed addresses skipped" in err, err
    assert [json.loads(line)["email"] for line in cli.ok("recipients", out.strip(), "--json").splitlines()] == ["plain@example.com"]


# ---- tokens ------------------------------------------------------------------------------------------


def test_hostile_token_spellings_are_refused_in_one_line_and_the_real_one_kept(cli: Cli, tmp_path: Path) -> None:
    from mailtower.core.unsubscribe import make_token

    cli.ok("limits")  # the database (a refused command on a new one leaves none behind)
    code, _, err = cli("unsubscribe", "verify", make_token(bytes(32), 1, "ann@example.com"))
    assert code == 2 and "issued no unsubscribe tokens" in err  # and checking made no secret:
    with sqlite3.connect(cli.db) as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'unsubscribe_secret'").fetchone() == (0,)
        conn.execute("INSERT INTO meta (key, value) VALUES ('unsubscribe_secret', ?)", ("ab" * 32,))
    code, _, err = cli("unsubscribe", "verify", make_token(bytes(32), 1, "ann@example.com"))  # another secret
    assert code == 2 and "signature" in err
    real = make_token(bytes.fromhex(_secret(cli.db)), 7, "ann@example.com")
    assert cli.ok("unsubscribe", "verify", f"  {real}\u00a0").strip() == "7\tann@example.com"
    hostile = [
        real[:-1], real + "A", real + "==", f"<{real}>", real.lower(), real.replace("A", "\uff21", 1),
        real[:10] + "\u200b" + real[10:], real + "%0A", real[:5] + "\x1b[2J" + real[5:], "A" * 100_000, "\u00e9" * 50,
    ]
    for token in hostile:
        code, out, err = cli("unsubscribe", "verify", token)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "\x1b" not in err, (token[:40], err)
        assert len(err) < 300
    lines = tmp_path / "tokens.txt"
    lines.write_text("\n".join([*hostile, real]) + "\r\n", encoding="utf-8")
    code, _, err = cli("suppress", "import", str(lines))
    assert code == 0 and "suppressed 1 address (1 from unsubscribe tokens" in err and "\x1b" not in err
    assert len(err.strip().splitlines()) == len(hostile) + 1


def _secret(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT value FROM meta WHERE key = 'unsubscribe_secret'").fetchone()[0]


def test_a_token_import_on_a_database_that_issued_none_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    from mailtower.core.unsubscribe import make_token

    tokens = tmp_path / "tokens.txt"
    tokens.write_text(make_token(bytes(32), 1, "ann@example.com") + "\n", encoding="utf-8")
    cli.ok("limits")  # the database (a refused command on a new one leaves none behind)
    code, _, err = cli("suppress", "import", str(tokens))
    assert code == 2 and "nothing to suppress" in err
    with sqlite3.connect(cli.db) as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'unsubscribe_secret'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM suppression").fetchone() == (0,)
