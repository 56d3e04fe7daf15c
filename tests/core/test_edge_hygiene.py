"""Input and output hygiene (issue 10, items 15, 19, 20, 23, 24): what reaches the terminal, what a
recipient file or a template may hold, special-use domains, and listing recipients with their reply.

Every test talks to a real SQLite file and, where mail goes out, to the aiosmtpd sink on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import sqlite3
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mailtower.core.display import safe, unsafe_character
from aiosmtpd.smtp import Envelope

from mailtower.core.sink import Sink, SinkHandler
from mailtower.core.store import Store
from tests.helpers import Cli, read_terminal, wait_until, write_csv

# Everything a terminal acts on: C0 (TAB, LF, CR included), DEL, C1 (0x9b is a one-byte CSI),
# line/paragraph separators, bidi embeddings, overrides and isolates.
TERMINAL_ACTIVE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# What hostile text looks like: OSC 0 retitles the terminal, CSI 2J clears it, C1 CSI, a line
# break that forges a line, a right-to-left override that reorders the columns after it.
HOSTILE = "\x1b]0;pwned\x07Evil\x1b[2J\x9b31m\r\nforged line\u202etxt.exe"


def clean(text: str, sep: str = "\n") -> bool:
    """True if no line of `text` holds a terminal-active character (line breaks between lines are
    ours, and so are the tabs between fields when `sep` is a tab too)."""
    return all(TERMINAL_ACTIVE.search(field) is None for line in text.split("\n") for field in line.split(sep))


def mailings(db: Path) -> list[tuple[int, str, int]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id, name, total FROM mailings ORDER BY id"))


def new_args(body: Path, people: Path, *extra: str, name: str = "Hygiene", subject: str = "Hi {{ name }}",
             sender: str = "news@example.org") -> list[str]:
    return ["new", "--name", name, "--subject", subject, "--from", sender, "--text", str(body),
            "--recipients", str(people), *extra]


def hostile_rows(db: Path, mailing_id: int) -> None:
    """What an older version, another writer or a server could have left in the store."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE mailings SET name = ?, last_error = ? WHERE id = ?", (HOSTILE, "451 " + HOSTILE, mailing_id))
        conn.execute(
            "UPDATE recipients SET state = 'deferred', last_code = 451, last_error = ?, attempts = 1 WHERE mailing_id = ?",
            ("451 " + HOSTILE, mailing_id),
        )


# ---- 15: core/display.safe --------------------------------------------------------------------


def test_safe_shows_every_terminal_active_character_as_a_visible_escape() -> None:
    every = "".join(map(chr, [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
                              *range(0x2066, 0x206A)]))
    shown = safe("a" + every + "b")
    assert TERMINAL_ACTIVE.search(shown) is None
    assert shown.startswith("a\\x00\\x01") and shown.endswith("\\u2069b")
    assert "\\x1b" in shown and "\\x9b" in shown and "\\n" in shown and "\\t" in shown and "\\u202e" in shown
    # Ordinary text, accents, other scripts, emoji and joiners pass untouched (and cost one search).
    plain = "Zoë Ünal — 東京 مرحبا 👩\u200d💻 [bold]not markup[/]"
    assert safe(plain) is plain
    assert safe(HOSTILE).count("\n") == 0
    assert unsafe_character("ab\x1bc") == "U+001B at position 3"
    assert unsafe_character("a\tb", allow="\t") is None


def test_log_records_are_made_safe(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    cli.ok("limits")  # the command line installs the safe log handler
    logging.getLogger("mailtower.sender").warning("server said: %s", HOSTILE)
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        logging.getLogger("mailtower.dashboard").exception("refresh failed")
    err = capsys.readouterr().err
    assert "server said: " in err and "\\x1b]0;pwned" in err
    assert clean(err)
    # The message is one line: the forged line stays inside it.
    assert not any(line.startswith("forged line") for line in err.splitlines())


# ---- 15: the command line ---------------------------------------------------------------------


def test_status_and_remaining_show_hostile_names_and_replies_safely(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann", "code": "1"}])
    mailing_id = int(cli.ok(*new_args(body, people)))
    hostile_rows(db, mailing_id)
    out = cli.ok("status")
    assert clean(out) and "\\x1b]0;pwned" in out
    assert "forged line" in out and not any(line.startswith("forged line") for line in out.splitlines())
    remaining = cli.ok("remaining", str(mailing_id))
    assert clean(remaining, "\t") and len(remaining.splitlines()) == 1 and "\\x9b31m" in remaining
    # JSON keeps the exact data, written as ASCII: no raw control or direction character.
    raw = cli.ok("status", "--json")
    assert clean(raw) and raw.isascii()
    assert json.loads(raw)["inactive"][0]["name"] == HOSTILE


def test_control_characters_in_recipient_names_and_fields_are_refused(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    people = tmp_path / "people.csv"
    with people.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "code"])
        writer.writerow(["ann@example.com", "\x1b]0;pwned\x07Ann", "1"])  # line 2: OSC in the name
        writer.writerow(["bob@example.com", "Bob\u202eevil", "2"])  # line 3: direction override
        writer.writerow(["cid@example.com", "Cid\x9b", "3"])  # line 4: C1 CSI
        writer.writerow(["dee@example.com", "Dee", "4\x1b[2J"])  # line 5: escape in a merge field
        writer.writerow(["eve@example.com", "Eve", "line one\nline\ttwo"])  # line 6: a body field may hold both
        writer.writerow(["fay@example.com", "Fay\tTab", "6"])  # line 8 (6 spans two): a tab has no place in a name
    body.write_text("Hello {{ name }}: {{ code }}\n")
    code, out, err = cli(*new_args(body, people))
    assert code == 0, err
    with sqlite3.connect(db) as conn:
        assert [e for (e,) in conn.execute("SELECT email FROM recipients")] == ["eve@example.com"]
    for line in (2, 3, 4, 8):
        assert re.search(rf"^{re.escape(str(people))}:{line}: name holds a control character \(U\+", err, re.M), err
    assert re.search(rf"^{re.escape(str(people))}:5: field 'code' holds a control character \(U\+001B", err, re.M)
    assert clean(err)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--name", "Spring\x1b]0;pwned\x07"), ("--name", "a\u202eb"), ("--subject", "Hi\x9b2J"),
     ("--subject", "Hi\tthere"), ("--from", "News\x1b[31m <news@example.org>")],
)
def test_control_characters_in_name_subject_and_sender_are_refused(
    cli: Cli, tmp_path: Path, body: Path, db: Path, flag: str, value: str
) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann", "code": "1"}])
    args = dict(name="n", subject="s", sender="news@example.org")
    args[{"--name": "name", "--subject": "subject", "--from": "sender"}[flag]] = value
    code, out, err = cli(*new_args(body, people, **args))
    assert code == 2 and out == ""
    assert err.startswith(f"mailtower: {flag} holds a control character (U+") and len(err.splitlines()) == 1
    assert clean(err)
    assert mailings(db) == []


# ---- 19: nothing created from a file without a valid recipient; nothing empty is queued ----------


@pytest.mark.parametrize(
    ("content", "detail"),
    [("email,name\n", "it has a header but no rows"), ("email,name\n,\n\n", "it has a header but no rows"),
     ("email,name\nnot-an-address,A\n@example.com,B\n", "2 rejected")],
)
def test_a_file_without_a_valid_recipient_creates_nothing(
    cli: Cli, tmp_path: Path, body: Path, db: Path, content: str, detail: str
) -> None:
    people = tmp_path / "people.csv"
    people.write_text(content, encoding="utf-8")
    body.write_text("Hello {{ name }}\n")
    for extra in ([], ["--now"]):
        code, out, err = cli(*new_args(body, people, *extra))
        assert code == 2 and out == ""
        last = err.strip().splitlines()[-1]
        assert last == f"mailtower: {people}: no valid recipient ({detail}); no mailing was created"
        assert mailings(db) == []


def test_importing_only_rejected_rows_changes_nothing(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    body.write_text("Hello {{ name }}\n")
    mailing_id = int(cli.ok(*new_args(body, write_csv(tmp_path / "a.csv", [{"email": "a@example.com", "name": "A"}]))))
    bad = tmp_path / "bad.csv"
    bad.write_text("email,name\nnope,X\n", encoding="utf-8")
    code, out, err = cli("import", str(mailing_id), str(bad))
    assert code == 2 and "imported 0" not in err
    assert err.strip().splitlines()[-1] == f"mailtower: {bad}: no valid recipient (1 rejected); nothing was imported"
    code, out, err = cli("import", str(mailing_id), str(tmp_path / "a.csv"))  # only addresses already in it
    assert code == 2 and "(1 already in the mailing)" in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT total FROM mailings").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'imported'").fetchone() == (0,)


@pytest.mark.parametrize("command", [["send-now"], ["schedule", "--at", "2099-01-01 09:00", "--tz", "UTC"], ["restart"]])
def test_a_mailing_without_recipients_is_not_queued(cli: Cli, tmp_path: Path, body: Path, db: Path, command: list[str]) -> None:
    body.write_text("Hello {{ name }}\n")
    mailing_id = int(cli.ok(*new_args(body, write_csv(tmp_path / "a.csv", [{"email": "a@example.com", "name": "A"}]))))
    if command == ["restart"]:
        cli.ok("send-now", str(mailing_id))
        cli.ok("stop", str(mailing_id))
    with sqlite3.connect(db) as conn:  # as an older version could leave it
        conn.execute("DELETE FROM recipients")
        conn.execute("UPDATE mailings SET total = 0")
    before = mailings(db), sqlite3.connect(db).execute("SELECT state FROM mailings").fetchone()
    code, out, err = cli(command[0], str(mailing_id), *command[1:])
    assert code == 2 and len(err.splitlines()) == 1
    assert f"mailing {mailing_id} has no recipients" in err
    assert (mailings(db), sqlite3.connect(db).execute("SELECT state FROM mailings").fetchone()) == before


# ---- 20: merge tags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "text", "html", "where"),
    [
        ("Hi {{ name", "Hello\n", None, "the subject, line 1, column 4: '{{' is not closed"),
        ("Hi", "Hello {{ name }}\nyour code {{code\n", None, "the text body, line 2, column 11: '{{' is not closed"),
        ("Hi", "Hello\n\n  name }} here\n", None, "the text body, line 3, column 8: '}}' closes no merge tag"),
        ("Hi", None, "<p>Hi</p>\n<p>{{ }}</p>", "the HTML body, line 2, column 4: '{{' is not closed"),
        ("Hi", None, "<p>{{ name }}</p> }}", "the HTML body, line 1, column 19: '}}' closes no merge tag"),
    ],
)
def test_a_broken_merge_tag_is_refused_saying_where(
    cli: Cli, tmp_path: Path, db: Path, subject: str, text: str | None, html: str | None, where: str
) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann", "code": "1"}])
    args = ["new", "--name", "n", "--subject", subject, "--from", "news@example.org", "--recipients", str(people)]
    if text is not None:
        (tmp_path / "t.txt").write_text(text)
        args += ["--text", str(tmp_path / "t.txt")]
    if html is not None:
        (tmp_path / "h.html").write_text(html)
        args += ["--html", str(tmp_path / "h.html")]
    code, out, err = cli(*args)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"mailtower: {where}")
    assert mailings(db) == []


def test_css_braces_in_an_html_style_element_are_not_merge_tags(cli: Cli, tmp_path: Path) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann"}])
    html = tmp_path / "h.html"
    html.write_text("<style>@media (max-width:600px){.a{width:100%}}</style><p>Hi {{ name }}</p>")
    assert cli.ok("new", "--name", "n", "--subject", "s", "--from", "news@example.org", "--html", str(html),
                  "--recipients", str(people)).strip().isdigit()


# ---- 23: special-use domains and a sender with a display name ----------------------------------


def test_special_use_domains_are_refused_naming_the_setting_that_allows_them(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "ann@example.com", "name": "A"}, {"email": "ops@corp.local", "name": "B"},
                                            {"email": "qa@host.test", "name": "C"}])
    body.write_text("Hello {{ name }}\n")
    code, _, err = cli(*new_args(body, people, sender="news@corp.local"))
    assert code == 2 and "--from" in err and "MAILTOWER_ALLOW_SPECIAL_DOMAINS=1" in err and "allow_special_domains" in err
    mailing_id = int(cli.ok(*new_args(body, people)))
    code, _, err = cli(*new_args(body, people))
    assert f"{people}:3: invalid email address 'ops@corp.local'" in err and "MAILTOWER_ALLOW_SPECIAL_DOMAINS=1" in err
    assert [total for _, _, total in mailings(db)] == [1, 1]
    # The environment variable and the TOML setting both allow them, sender and recipients alike.
    allowed = Cli(db, None, MAILTOWER_ALLOW_SPECIAL_DOMAINS="1")
    second = int(allowed.ok(*new_args(body, people, sender="News <news@corp.local>")))
    toml = tmp_path / "special.toml"
    toml.write_text("allow_special_domains = true\n")
    third = int(Cli(db, None, MAILTOWER_CONFIG=str(toml)).ok(*new_args(body, people, sender="news@corp.local")))
    totals = {mid: total for mid, _, total in mailings(db)}
    assert totals[second] == totals[third] == 3 and totals[mailing_id] == 1


class RecordingHandler(SinkHandler):
    """The sink's handler, also keeping each MAIL FROM address and message."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_from: list[str] = []
        self.messages: list[bytes] = []

    async def handle_MAIL(self, server: object, session: object, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        self.mail_from.append(address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.messages.append(bytes(envelope.content))  # type: ignore[arg-type]
        return await super().handle_DATA(server, session, envelope)  # type: ignore[arg-type]


def test_a_sender_with_a_display_name_is_accepted_and_sent_with_it(db: Path, tmp_path: Path, body: Path) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "ann@example.com", "name": "Ann", "code": "7"}])
    sink = Sink()
    sink.handler = handler = RecordingHandler()
    with sink:
        cli = Cli(db, sink.port)
        cli.ok(*new_args(body, people, "--now", sender="Ñews Team <news@example.org>"))
        cli.ok("run", "--until-idle")
    assert [d.recipient for d in sink.deliveries] == ["ann@example.com"]
    assert handler.mail_from == ["news@example.org"]  # the bare address in the envelope
    message = message_from_bytes(handler.messages[0], policy=default_policy)
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Ñews Team", "news@example.org")


@pytest.mark.parametrize("sender", ["News <news@example.org>, Other <o@example.org>", "News <not-an-address>", "<>"])
def test_a_sender_that_is_not_one_valid_address_is_refused(cli: Cli, tmp_path: Path, body: Path, db: Path, sender: str) -> None:
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann", "code": "1"}])
    code, _, err = cli(*new_args(body, people, sender=sender))
    assert code == 2 and err.startswith("mailtower: --from") and len(err.splitlines()) == 1
    assert mailings(db) == []


# ---- 24: mailtower recipients ------------------------------------------------------------------


def failing_sink_rule(stage: str, address: str, attempt: int) -> str | None:
    if stage == "rcpt" and address.startswith("bad"):
        return "550 5.1.1 <" + address + "> no such user\x1b[31m here"
    if stage == "rcpt" and address.startswith("slow"):
        return "451 4.7.1 greylisted, try again later"
    return None


def test_recipients_lists_failed_recipients_with_their_reply(db: Path, tmp_path: Path, body: Path) -> None:
    with Sink(fault=failing_sink_rule) as sink:
        cli = Cli(db, sink.port, MAILTOWER_RETRY_BASE="3600", MAILTOWER_RETRY_MAX="3600")
        rows = [{"email": f"{kind}{i}@example.com", "name": f"{kind} {i}", "code": str(i)}
                for i in range(3) for kind in ("ok", "bad", "slow")]
        mailing_id = int(cli.ok(*new_args(body, write_csv(tmp_path / "p.csv", rows), "--now")))
        sender = cli.popen("run", "--until-idle")
        try:
            def settled() -> bool:
                with sqlite3.connect(db) as conn:
                    return conn.execute("SELECT sent, failed, deferred FROM mailings").fetchone() == (3, 3, 3)

            wait_until(settled, what="3 sent, 3 failed, 3 deferred")
            cli.ok("stop", str(mailing_id))  # the deferred ones wait an hour; nothing is current now
            assert sender.wait(timeout=20) == 0
        finally:
            if sender.poll() is None:
                sender.terminate()
                sender.wait(timeout=10)
    failed = cli.ok("recipients", str(mailing_id), "--state", "failed").splitlines()
    assert [line.split("\t")[:4] for line in failed] == [[f"bad{i}@example.com", "failed", "1", "550"] for i in range(3)]
    assert all("5.1.1" in line and "no such user" in line for line in failed) and clean("\n".join(failed), "\t")
    both = cli.ok("recipients", str(mailing_id), "--state", "failed,deferred").splitlines()
    assert sorted(line.split("\t")[1] for line in both) == ["deferred"] * 3 + ["failed"] * 3
    everyone = cli.ok("recipients", str(mailing_id)).splitlines()
    assert len(everyone) == 9 and {line.split("\t")[1] for line in everyone} == {"sent", "failed", "deferred"}
    lines = cli.ok("recipients", str(mailing_id), "--state", "deferred", "--json").splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["email"] for d in docs] == [f"slow{i}@example.com" for i in range(3)]
    assert all(d["state"] == "deferred" and d["last_code"] == 451 and "greylisted" in d["last_error"] for d in docs)
    table = list(csv.reader(io.StringIO(cli.ok("recipients", str(mailing_id), "--csv", "--state", "sent"))))
    assert table[0] == ["email", "name", "state", "attempts", "last_code", "last_error"]
    assert [row[0] for row in table[1:]] == [f"ok{i}@example.com" for i in range(3)]


def test_recipients_pages_through_a_long_ledger_and_filters_in_doubt(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    n = 4500  # more than two pages
    mailing_id = int(cli.ok(*new_args(body, write_csv(tmp_path / "p.csv", [
        {"email": f"user{i:05d}@example.com", "name": "U", "code": "1"} for i in range(n)]))))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE recipients SET in_doubt = 1 WHERE id % 1000 = 0")
    lines = cli.ok("recipients", str(mailing_id)).splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"user{i:05d}@example.com" for i in range(n)]
    doubt = cli.ok("recipients", str(mailing_id), "--state", "in-doubt").splitlines()
    assert len(doubt) == 4 and all(line.split("\t")[1] == "in doubt" for line in doubt)
    assert len(cli.ok("recipients", str(mailing_id), "--state", "pending").splitlines()) == n - 4


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--state", "bounced"], "mailtower: --state: unknown state 'bounced'; choose from"),
     (["--state", "failed,"], "mailtower: --state: unknown state ''"),
     (["--csv", "--json"], "not allowed with argument")],
)
def test_recipients_refuses_unknown_states_in_one_line(cli: Cli, tmp_path: Path, body: Path, args: list[str], message: str) -> None:
    mailing_id = int(cli.ok(*new_args(body, write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "A", "code": "1"}]))))
    code, out, err = cli("recipients", str(mailing_id), *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err
    code, out, err = cli("recipients", "999")
    assert code == 2 and err == "mailtower: no mailing with id 999\n"


def test_store_recipient_pages_hold_one_page_at_a_time(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    mailing_id = int(cli.ok(*new_args(body, write_csv(tmp_path / "p.csv", [
        {"email": f"u{i}@example.com", "name": "U", "code": "1"} for i in range(25)]))))

    async def pages() -> list[int]:
        store = await Store.open(db)
        try:
            sizes, after = [], 0
            while True:
                page = await store.recipients_page(mailing_id, {"pending"}, after_id=after, limit=10)
                if not page:
                    return sizes
                sizes.append(len(page))
                after = page[-1].id
        finally:
            await store.close()

    assert asyncio.run(pages()) == [10, 10, 5]


def test_control_characters_in_a_header_column_are_refused(tmp_path: Path) -> None:
    """A column name becomes a merge field name: an escape in it is refused like one in a name."""
    body = tmp_path / "body.txt"
    body.write_text("Hi\n")
    people = tmp_path / "people.csv"
    people.write_text("email,name,\x1b]0;owned\x07city\nann@example.com,Ann,Paris\n", encoding="utf-8")
    db = tmp_path / "h.db"
    code, out, err = Cli(db, None)(*new_args(body, people))
    assert code == 2 and "column 3 of the header holds a control character (U+001B" in err
    assert "\x1b" not in err  # the refusal itself is safe to print



# ---- characters that show as nothing ------------------------------------------------------------


@pytest.mark.parametrize("name", ["\u200b", "\ufeff\u2060", "Spring\u200b sale", "\u3164", "Spring\u00ad sale",
                                  "a\U000e0041", "\u200e", "\u200d\u0301 "])
def test_a_mailing_name_that_shows_as_nothing_or_as_another_is_refused(
    cli: Cli, tmp_path: Path, body: Path, db: Path, name: str
) -> None:
    """`--name $'\\u200b'` made a mailing listed as "#2   draft" (past the empty-name check), and
    "Spring\u200b sale" one that looks like "Spring sale" beside it."""
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann", "code": "1"}])
    code, out, err = cli(*new_args(body, people, name=name))
    assert code == 2 and out == ""
    assert err.startswith(("mailtower: --name holds an invisible character (U+",  # one that shows as nothing
                           "mailtower: --name: a mailing needs a name that shows")) and len(err.splitlines()) == 1
    assert clean(err) and safe(name) in err
    assert mailings(db) == []


def test_invisible_characters_elsewhere_are_kept_and_shown_escaped(
    cli: Cli, tmp_path: Path, body: Path, db: Path
) -> None:
    """A subject, a From name or a recipient's name may hold one (pasted text): kept as it is
    for the mail, shown as an escape on the terminal. Joiners and marks that scripts need stay."""
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "A\u200bnn", "code": "1"}])
    mailing_id = cli.ok(*new_args(body, people, subject="Hi\u200bthere", sender='"Bank\u200b" <news@example.org>')).strip()
    assert safe("Hi\u200bthere") == "Hi\\u200bthere" and safe("\u200d\u200e\u0301") == "\u200d\u200e\u0301"
    assert safe("\U000e0041") == "\\U000e0041" and cli.ok(*new_args(body, people, name="\u1820\u180e\u1821"))  # Mongolian
    listing = cli.ok("recipients", mailing_id, "--json")
    assert json.loads(listing)["name"] == "A\u200bnn"
    assert unsafe_character("Spring\u200b sale") is None  # refused only where a name identifies a mailing
    assert unsafe_character("Spring\u200b sale", invisible=True) == "U+200B at position 7"



def _stdout_of(db: Path, args: list[str], *, tty: bool) -> str:
    """`mailtower ARGS` in a child whose stdout is a pseudo-terminal (or a pipe): what it wrote."""
    import os
    import pty
    import subprocess
    import sys
    import time

    env = {**os.environ, "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull}
    command = [sys.executable, "-m", "mailtower.tui.cli", *args]
    if not tty:
        return subprocess.run(command, env=env, capture_output=True, timeout=60, check=True).stdout.decode("utf-8")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
    finally:
        os.close(slave)
    try:
        seen = read_terminal(master, proc, time.monotonic() + 60)
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    # CSV rows end in CRLF, to which the terminal adds its own CR: both are the line's ending.
    return seen.decode("utf-8").replace("\r\r\n", "\n").replace("\r\n", "\n")


def test_remaining_csv_on_a_terminal_is_escaped_and_exact_in_a_pipe(cli: Cli, tmp_path: Path, body: Path, db: Path) -> None:
    """`remaining ID --csv` on a terminal wrote a stored name's ESC and CR raw (a row rewrote
    itself on screen); `recipients --csv` escaped them there. Into a pipe or a file, exact values."""
    people = write_csv(tmp_path / "p.csv", [{"email": "a@example.com", "name": "Ann", "code": "1"}])
    mailing_id = cli.ok(*new_args(body, people)).strip()
    hostile_rows(db, int(mailing_id))
    shown = _stdout_of(db, ["remaining", mailing_id, "--csv"], tty=True)
    assert safe(HOSTILE) in shown and clean(shown), shown
    exact = _stdout_of(db, ["remaining", mailing_id, "--csv"], tty=False)
    assert list(csv.reader(io.StringIO(exact)))[1][5] == "451 " + HOSTILE
