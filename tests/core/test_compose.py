"""core.compose: the bytes of each message, checked by parsing them back with the stdlib parser."""

from __future__ import annotations

import asyncio
import binascii
import email.policy
import html
import re
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailtower.core.compose import (
    BUILTIN_FIELDS,
    MessageTemplate,
    check_header_value,
    fields_used,
    message_id,
)
from mailtower.core.errors import UserError

NOW = datetime(2025, 3, 14, 15, 9, 26, tzinfo=timezone.utc).timestamp()
SINGLE_PART_HEADERS = [
    "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding",
]
MULTIPART_HEADERS = SINGLE_PART_HEADERS[:-1]


def build(
    subject: str = "Hello {{ name }}",
    text: str | None = "Hi {{ name }}, greetings to {{ city }}.\n",
    html: str | None = None,
    from_addr: str = "News <news@example.com>",
    fields: tuple[str, ...] = ("city",),
    mailing_id: int = 7,
) -> MessageTemplate:
    return MessageTemplate.build(
        mailing_id=mailing_id, subject=subject, from_addr=from_addr, text=text, html=html,
        available_fields=fields,
    )


def render(
    template: MessageTemplate,
    email: str = "ann@example.org",
    name: str = "Ann Lee",
    recipient_id: int = 42,
    **fields: str,
) -> bytes:
    return template.render(
        recipient_id=recipient_id, email=email, name=name, fields=fields or {"city": "Oslo"},
        now=NOW,
    )


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str:
    """The decoded body of the text/<subtype> part, with LF line endings."""
    part = message if not message.is_multipart() else next(
        p for p in message.iter_parts() if p.get_content_subtype() == subtype
    )
    assert part.get_content_type() == f"text/{subtype}"
    assert part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == expected_encoding(part.get_content().replace("\r\n", "\n"))
    return part.get_content().replace("\r\n", "\n")


def seven_bit_allows(text: str) -> bool:
    """RFC 2045's 7bit as compose uses it: printable ASCII lines of at most 980 characters, none
    ending in a space, and never "=_", with which every multipart boundary starts (LF endings here)."""
    return "=_" not in text and all(re.fullmatch(r"[ -~]{0,980}", line) and not line.endswith(" ")
                                    for line in text.split("\n"))


def expected_encoding(text: str) -> str:
    return "7bit" if seven_bit_allows(text) else "quoted-printable"


def encoded(text: str) -> bytes:
    """The body compose should send for this text (LF endings): as it is when 7bit allows it."""
    if seven_bit_allows(text):
        return text.replace("\n", "\r\n").encode("ascii")
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def raw_header(raw: bytes, name: str) -> str:
    """The unfolded, undecoded value of a header in the raw bytes."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", head)
    values = [line.split(":", 1)[1].lstrip(" ") for line in unfolded.split("\r\n")
              if line.split(":", 1)[0] == name]
    assert len(values) == 1
    return values[0]


def rfc2047_display_name(raw: bytes, header: str) -> str:
    """The display name decoded by the rules of RFC 2047, where whitespace between adjacent
    encoded-words is dropped (the policy.default parser keeps it inside phrases)."""
    ((display, _),) = getaddresses([raw_header(raw, header)])
    return str(make_header(decode_header(display)))


def unescape_surrogates(text: str) -> str:
    """The parser hands raw UTF-8 (RFC 6532) in headers over as surrogate escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8")


def assert_wire_format(raw: bytes) -> None:
    assert raw.endswith(b"\r\n")
    without_crlf = raw.replace(b"\r\n", b"")
    assert b"\n" not in without_crlf and b"\r" not in without_crlf, "bare CR or LF"
    assert b"\0" not in raw
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998


# --- fields_used / check_header_value / message_id -------------------------------------------


def test_fields_used_finds_names_with_or_without_spaces_inside_braces() -> None:
    assert fields_used("Hi {{name}} from {{  city  }}", None, "{{ first name }}{{email}}") == {
        "name", "city", "first name", "email",
    }
    assert fields_used("no fields, {single} braces, {{ }} empty", None, "") == set()
    assert fields_used("{{{ name }}}") == {"name"}
    assert fields_used() == set()
    assert BUILTIN_FIELDS == {"email", "name"}


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nBcc: x@y", "nul\0"])
def test_check_header_value_refuses_line_breaks_and_nul(bad: str) -> None:
    with pytest.raises(UserError, match="^the subject contains a line break"):
        check_header_value("the subject", bad)


def test_check_header_value_accepts_anything_else() -> None:
    check_header_value("x", "tabs\tand ünïcode \u2028 and =?utf-8?q?x?= and \"quotes\"")


def test_message_id_is_derived_from_mailing_recipient_and_sender_domain() -> None:
    assert message_id(3, 9, "news@example.com") == "<m3.r9@example.com>"
    assert message_id(3, 9, "The News <news@lists.example.com>") == "<m3.r9@lists.example.com>"
    assert message_id(3, 9, "news@bücher.de") == "<m3.r9@xn--bcher-kva.de>"
    with pytest.raises(UserError, match="sender address"):
        message_id(1, 1, "nobody")


def test_message_id_header_is_deterministic_across_builds_and_renders() -> None:
    first, second = build(), build()
    assert parse(render(first))["Message-ID"] == "<m7.r42@example.com>"
    assert parse(render(second))["Message-ID"] == "<m7.r42@example.com>"
    assert render(first) == render(first)
    assert parse(render(first, recipient_id=43))["Message-ID"] == "<m7.r43@example.com>"


# --- build refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject": "Hi {{ city }}", "fields": ()},
         "merge field 'city' is used in the subject but is not a column of the recipient file"),
        ({"text": "{{ zip }} {{city}}", "fields": ()},
         "merge fields 'city', 'zip' are used in the text body but are not columns"),
        ({"text": None, "html": "<p>{{ town }}</p>"},
         "merge field 'town' is used in the HTML body"),
        ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject contains a line break"),
        ({"subject": "Hi\0"}, "subject contains a line break"),
        ({"from_addr": "news@example.com\nBcc: x@y.z"}, "sender address contains a line break"),
        ({"from_addr": "nobody"}, "sender address 'nobody' is not one email address"),
        ({"from_addr": "a@example.com, b@example.com"}, "is not one email address"),
        ({"from_addr": "News <news@exa mple.com>"}, "sender address"),
        ({"text": None, "html": None}, "no body"),
        ({"text": "", "html": ""}, "no body"),
    ],
)
def test_build_refuses_with_a_message_naming_what(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        build(**kwargs)
    assert message in str(caught.value)


def test_builtin_fields_need_no_column() -> None:
    template = build(subject="{{ name }} <{{email}}>", text="{{ email }}", fields=())
    assert template.subject_fields == {"name", "email"}
    assert template.fields == {"name", "email"}


# --- message shape -----------------------------------------------------------------------------


def test_text_only_message() -> None:
    raw = render(build())
    assert_wire_format(raw)
    message = parse(raw)
    assert list(message.keys()) == SINGLE_PART_HEADERS
    assert message["From"].addresses[0].display_name == "News"
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert str(message["To"]) == "Ann Lee <ann@example.org>"
    assert message["Subject"] == "Hello Ann Lee"
    assert message["Date"].datetime == datetime.fromtimestamp(NOW, timezone.utc)
    assert message["MIME-Version"] == "1.0"
    assert body(message, "plain") == "Hi Ann Lee, greetings to Oslo.\n"
    assert message.defects == []


def test_html_only_message() -> None:
    message = parse(render(build(text=None, html="<p>Hi {{ name }} in {{ city }}</p>")))
    assert list(message.keys()) == SINGLE_PART_HEADERS
    assert body(message, "html") == "<p>Hi Ann Lee in Oslo</p>\n"


def test_text_and_html_make_multipart_alternative() -> None:
    template = build(text="Text {{ city }}\n", html="<p>HTML {{ city }}</p>\n")
    raw = render(template)
    assert_wire_format(raw)
    message = parse(raw)
    assert list(message.keys()) == MULTIPART_HEADERS
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_boundary() == template.boundary
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [list(p.keys()) for p in parts] == [["Content-Type", "Content-Transfer-Encoding"]] * 2
    assert body(message, "plain") == "Text Oslo\n"
    assert body(message, "html") == "<p>HTML Oslo</p>\n"
    assert message.defects == [] and all(p.defects == [] for p in parts)


def test_boundary_is_random_per_template_and_not_in_the_content() -> None:
    one, two = build(html="<p>x</p>"), build(html="<p>x</p>")
    assert one.boundary != two.boundary
    assert one.boundary is not None and one.boundary.startswith("=_")
    sneaky = f"--{one.boundary}\n"
    raw = render(one, city=sneaky)
    message = parse(raw)
    assert body(message, "plain") == f"Hi Ann Lee, greetings to {sneaky}.\n"
    assert raw.count(one.boundary.encode()) == 4  # the parameter, two delimiters, the close


def test_non_ascii_subject_name_and_body() -> None:
    template = build(
        subject="Grüße aus Köln, {{ name }} 🎉",
        text="Liebe {{ name }},\nschöne Grüße nach {{ city }} — bis bald ☕\n",
        html="<p>Liebe {{ name }}, schöne Grüße nach {{ city }}</p>",
        from_addr="Bäckerei Müller <info@baeckerei.example>",
    )
    raw = render(template, name="Zoë Ünal", city="Zürich")
    assert_wire_format(raw)
    message = parse(raw)
    assert message["Subject"] == "Grüße aus Köln, Zoë Ünal 🎉"
    to = message["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == ("Zoë Ünal", "ann@example.org")
    sender = message["From"].addresses[0]
    assert sender.display_name == "Bäckerei Müller"
    assert sender.addr_spec == "info@baeckerei.example"
    assert body(message, "plain") == (
        "Liebe Zoë Ünal,\nschöne Grüße nach Zürich — bis bald ☕\n"
    )
    assert body(message, "html") == "<p>Liebe Zoë Ünal, schöne Grüße nach Zürich</p>\n"
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), "non-ASCII header text must be RFC 2047 encoded"


def test_non_ascii_addresses_are_raw_utf8_as_rfc6532_says() -> None:
    """A non-ASCII local part stays raw UTF-8 (RFC 6532); an IDN domain is written as its A-label,
    as in the envelope, so an address with an ASCII local part needs no SMTPUTF8 (issue 10, 14)."""
    template = build(from_addr="Bäckerei <info@bäckerei.example>")
    raw = render(template, email="jörg@bücher.de", name="Jörg")
    assert "To: Jörg".encode() not in raw  # the name is still encoded
    assert "<jörg@xn--bcher-kva.de>".encode() in raw and b"<info@xn--bckerei-5wa.example>" in raw
    message = parse(raw)
    assert message["Message-ID"] == "<m7.r42@xn--bckerei-5wa.example>"
    to = message["To"].addresses[0]
    assert to.display_name == "Jörg"
    assert unescape_surrogates(to.addr_spec) == "jörg@xn--bcher-kva.de"
    ascii_local = render(template, email="user@bücher.de", name="Jörg")
    assert ascii_local.split(b"\r\n\r\n", 1)[0].isascii()


def test_merge_values_are_html_escaped_in_html_only() -> None:
    value = """<b>"Tom" & Jerry's</b>"""
    template = build(
        subject="{{ city }}", text="{{ city }}", html="<p title='{{ city }}'>{{ city }}</p>"
    )
    message = parse(render(template, city=value))
    escaped = html.escape(value, quote=True)
    assert body(message, "html") == f"<p title='{escaped}'>{escaped}</p>\n"
    assert body(message, "plain") == value + "\n"
    assert message["Subject"] == value


def test_name_and_email_work_in_every_template() -> None:
    template = build(
        subject="For {{email}}", text="{{ name }} / {{ email }}", html="<i>{{name}}</i>", fields=()
    )
    message = parse(render(template, name="Bo <Boss>", email="bo@example.org", city="-"))
    assert message["Subject"] == "For bo@example.org"
    assert body(message, "plain") == "Bo <Boss> / bo@example.org\n"
    assert body(message, "html") == "<i>Bo &lt;Boss&gt;</i>\n"


def test_literal_text_is_kept_exactly() -> None:
    text = (
        "100% sure {single} {{ }} %s %(x)s\n.\n.starts with a dot\n..\nFrom here\n"
        "trailing space \n"
    )
    message = parse(render(build(subject="50% off %s", text=text)))
    assert message["Subject"] == "50% off %s"
    assert body(message, "plain") == text


def test_values_are_not_expanded_again() -> None:
    message = parse(render(build(text="{{ city }}"), city="{{ name }} {{ email }} %s"))
    assert body(message, "plain") == "{{ name }} {{ email }} %s\n"


def test_missing_or_empty_values_render_empty() -> None:
    template = build(text="[{{ city }}]", subject="Hi {{ name }}")
    raw = template.render(recipient_id=1, email="a@example.org", name="", fields={}, now=NOW)
    message = parse(raw)
    assert body(message, "plain") == "[]\n"
    assert message["Subject"] == "Hi "  # exactly what the template makes
    assert str(message["To"]) == "a@example.org"


def test_mixed_line_endings_become_crlf_and_decode_to_lf() -> None:
    template = build(text="one\r\ntwo\rthree\nfour {{ city }}", html="<p>\r\n{{ city }}\r</p>")
    raw = render(template, city="a\r\nb\rc\nd")
    assert_wire_format(raw)
    message = parse(raw)
    assert body(message, "plain") == "one\ntwo\nthree\nfour a\nb\nc\nd\n"
    assert body(message, "html") == "<p>\na\nb\nc\nd\n</p>\n"


def test_bodies_are_quoted_printable_of_the_whole_text() -> None:
    """Encoding only the lines that hold a field gives the same bytes as encoding everything."""
    long_line = "x" * 150 + " {{ city }} " + "é" * 80
    text = f"start\n{long_line}\n\nmiddle {{{{name}}}} and {{{{ city }}}}\n" + "y " * 100 + "\nend"
    raw = render(build(text=text), name="Ann", city="Oslo ")
    intended = text.replace("{{name}}", "Ann").replace("{{ city }}", "Oslo ") + "\n"
    expected = binascii.b2a_qp(intended.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    assert raw.split(b"\r\n\r\n", 1)[1] == expected
    assert all(len(line) <= 76 for line in expected.split(b"\r\n"))
    assert body(parse(raw), "plain") == intended


body_pieces = st.one_of(
    st.sampled_from(
        ["{{ name }}", "{{city}}", "{{\ncity\n}}", "\n", "\r\n", "\r", " ", ".", "=", "%"]
    ),
    st.text(max_size=90),
)


@settings(max_examples=150, deadline=None)
@given(
    template=st.lists(body_pieces, min_size=1, max_size=25).map("".join).filter(bool),
    city=st.text(max_size=100),
    html_body=st.booleans(),
)
def test_encoding_only_the_lines_with_fields_equals_encoding_everything(
    template: str, city: str, html_body: bool
) -> None:
    message = build(text=None if html_body else template, html=template if html_body else None)
    raw = render(message, name="Ann", city=city)
    value = html.escape(city) if html_body else city
    template = template.replace("\r\n", "\n").replace("\r", "\n")
    template += "" if template.endswith("\n") else "\n"  # the template gets a final line break
    intended = re.sub(r"\{\{\s*city\s*\}\}", lambda _: value, template.replace("{{ name }}", "Ann"))
    intended = intended.replace("\r\n", "\n").replace("\r", "\n")
    head, sent = raw.split(b"\r\n\r\n", 1)
    assert sent == encoded(intended)
    assert f"Content-Transfer-Encoding: {expected_encoding(intended)}".encode() in head
    assert_wire_format(raw)


def test_header_lines_stay_within_78_columns() -> None:
    subject = "A rather long subject line that goes on and on {{ city }} " * 3
    long_name = "Maximiliane Müller-Lüdenscheidt " * 4
    raw = render(build(subject=subject), name=long_name, city="Örebro")
    message = parse(raw)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    assert message["Subject"] == subject.replace("{{ city }}", "Örebro")
    assert rfc2047_display_name(raw, "To") == " ".join(["Maximiliane Müller-Lüdenscheidt"] * 4)

    plain = "word " * 40 + "end"
    raw = render(build(subject=plain))
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))
    assert parse(raw)["Subject"] == plain


@pytest.mark.parametrize(
    "subject",
    ["  leading spaces", "trailing spaces  ", "double  space", "tab\there", "=?utf-8?q?fake?=",
     "x" * 200, "", "\u2028 line separator", "é"],
)
def test_awkward_subjects_survive_exactly(subject: str) -> None:
    message = parse(render(build(subject=subject)))
    assert message["Subject"] == subject
    assert message["Subject"].defects == ()


def test_control_characters_in_header_text_become_spaces() -> None:
    template = build(subject="Bell\x07 escape\x1b[31m next line\x85 del\x7f")
    raw = render(template, name="Ann\x1b[2J\x0bLee\x07")
    message = parse(raw)
    assert message["Subject"] == "Bell  escape [31m next line  del "
    assert message["To"].addresses[0].display_name == "Ann [2J Lee"
    assert message["Subject"].defects == () and message["To"].defects == ()


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Ann Lee", "Ann Lee"),
        ('Lee, Ann "The Boss" \\o/', 'Lee, Ann "The Boss" \\o/'),
        ("  Ann   Lee  ", "Ann Lee"),
        ("Ann\tLee", "Ann Lee"),
        ("=?utf-8?b?QQ==?=", "=?utf-8?b?QQ==?="),
        ("José", "José"),
        ("Ann <ann@evil.example>", "Ann <ann@evil.example>"),
        ("   ", ""),
    ],
)
def test_display_names_are_quoted_or_encoded_as_needed(name: str, shown: str) -> None:
    raw = render(build(), name=name)
    to = parse(raw)["To"]
    assert len(to.addresses) == 1
    assert to.addresses[0].display_name == shown
    assert to.addresses[0].addr_spec == "ann@example.org"
    assert to.defects == ()


@pytest.mark.parametrize(
    ("address", "username", "domain"),
    [
        ("ann.lee+tag@example.org", "ann.lee+tag", "example.org"),
        ('"ann lee"@example.org', "ann lee", "example.org"),
        ('"a\\"b"@example.org', 'a"b', "example.org"),
        ("ann lee@example.org", "ann lee", "example.org"),
        ('a"b\\c@example.org', 'a"b\\c', "example.org"),
        ("a@b@example.org", "a@b", "example.org"),
        ("ann@x.org>, <victim@example.org", "ann@x.org>, <victim", "example.org"),
        (".ann..lee.@example.org", ".ann..lee.", "example.org"),
        ("jörg@bücher.de", "jörg", "xn--bcher-kva.de"),  # the domain as its A-label
        ("=?utf-8?b?QQ==?=@example.org", "=?utf-8?b?QQ==?=", "example.org"),
        ('"=?utf-8?b?QQ==?="@example.org', "=?utf-8?b?QQ==?=", "example.org"),
        ("ann@[192.0.2.1]", "ann", "[192.0.2.1]"),
    ],
)
def test_addresses_are_quoted_where_needed(address: str, username: str, domain: str) -> None:
    raw = render(build(), email=address, name="")
    to = parse(raw)["To"]
    assert len(to.addresses) == 1
    assert unescape_surrogates(to.addresses[0].username) == username
    assert unescape_surrogates(to.addresses[0].domain) == domain


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ann@example.org\r\nBcc: victim@example.com",
         "field 'email' of recipient 42 contains a line break"),
        ("ann\0@example.org", "field 'email' of recipient 42 contains a line break"),
        ("ann@example.org>, victim@example.net>",
         "field 'email' of recipient 42 has an invalid domain"),
        ("no-at-sign", "field 'email' of recipient 42 is not an email address"),
        ("ann@=?utf-8?b?QQ==?=.example", "has an invalid domain"),
        ("ann\t@example.org", "control or separator"),
        ("ann\u2028@example.org", "control or separator"),
        ("a" * 250 + "@example.org", "longer than 254"),
    ],
)
def test_bad_addresses_are_refused(address: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        render(build(), email=address)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Ann\r\nBcc: victim@example.com"},
         "field 'name' of recipient 42 contains a line break"),
        ({"name": "Ann\0"}, "field 'name' of recipient 42"),
        ({"city": "Oslo\nBcc: victim@example.com"},
         "merge field 'city' of recipient 42 (used in the subject) contains a line break"),
    ],
)
def test_header_injection_through_recipient_values_is_refused(kwargs: dict, message: str) -> None:
    template = build(subject="News for {{ city }}")
    with pytest.raises(UserError) as caught:
        render(template, **kwargs)
    assert message in str(caught.value)


def test_line_breaks_in_values_used_only_in_bodies_are_fine() -> None:
    template = build(subject="Fixed", text="{{ city }}", html="<p>{{ city }}</p>")
    assert template.subject_fields == frozenset()
    message = parse(render(template, city="Oslo\nBcc: x@y.z\0"))
    assert list(message.keys()) == MULTIPART_HEADERS
    assert body(message, "plain") == "Oslo\nBcc: x@y.z\0\n"


def test_date_is_rfc5322_and_follows_the_clock() -> None:
    template = build()
    first = template.render(recipient_id=1, email="a@example.org", name="", fields={}, now=NOW)
    later = template.render(
        recipient_id=1, email="a@example.org", name="", fields={}, now=NOW + 61.5
    )
    assert raw_header(first, "Date") == "Fri, 14 Mar 2025 15:09:26 +0000"
    assert parse(later)["Date"].datetime == datetime(2025, 3, 14, 15, 10, 27, tzinfo=timezone.utc)
    live = parse(template.render(recipient_id=1, email="a@example.org", name="", fields={}))
    assert abs(live["Date"].datetime.timestamp() - datetime.now(timezone.utc).timestamp()) < 5


# --- the property test ------------------------------------------------------------------------

SPECIALS = ["\r", "\n", "\r\n", "\0", '"', "\\", "=?", "?=", "=?utf-8?b?QQ==?=", "<", ">", "@",
            ",", ";", ":", "(", ")", " ", "  ", "\t", "ä", "€", "😀", "\u2028", "\x85", ".",
            "%s",
            "{{ name }}", "=", "_", "?"]
pieces = st.one_of(st.text(max_size=6), st.sampled_from(SPECIALS))
fuzz_text = st.one_of(
    st.lists(pieces, max_size=12).map("".join),
    st.lists(pieces, min_size=30, max_size=120).map("".join),  # long, to exercise folding
)
BREAKERS = ("\r", "\n", "\0")


def as_mailbox(local: str) -> str:
    """The mailbox a local part names: one already quoted for SMTP is taken as quoted."""
    if re.fullmatch(r'"(?:[^"\\]|\\.)*"', local):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def header_text(value: str) -> str:
    """Header text as intended: C0 controls but TAB, DEL and C1 controls become spaces."""
    return "".join(
        " " if (ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 else c for c in value
    )


def breaks_a_header(value: str) -> bool:
    return any(c in value for c in BREAKERS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=fuzz_text, name=fuzz_text, local=fuzz_text.filter(bool), city=fuzz_text,
    note=fuzz_text,
)
# A value ending in CR before the template's LF: two line breaks, not one CRLF (hypothesis found it).
@example(subject="s", name="n", local="a", city="c", note="x\r")
def test_fuzzed_values_give_exactly_the_intended_headers_or_a_named_refusal(
    subject: str, name: str, local: str, city: str, note: str
) -> None:
    subject_template = subject.replace("{", "(") + " {{ city }}"
    text = "Dear {{ name }},\n{{ note }}\n"
    html_template = "<p>{{ note }}</p><p>{{ city }}</p>"
    address = f"{local}@example.com"
    if breaks_a_header(subject):
        with pytest.raises(UserError, match="subject contains a line break"):
            build(
                subject=subject_template, text=text, html=html_template, fields=("city", "note")
            )
        return
    template = build(
        subject=subject_template, text=text, html=html_template, fields=("city", "note")
    )

    refusals = set()
    if breaks_a_header(name):
        refusals.add("field 'name'")
    if not address.isprintable() or len(address) > 254:  # covers CR, LF and NUL too
        refusals.add("field 'email'")
    if breaks_a_header(city):
        refusals.add("merge field 'city'")
    try:
        raw = template.render(
            recipient_id=5, email=address, name=name, fields={"city": city, "note": note}, now=NOW
        )
    except UserError as refused:
        assert any(str(refused).startswith(what + " of recipient 5") for what in refusals), refused
        return
    assert not refusals

    assert_wire_format(raw)
    message = parse(raw)
    assert list(message.keys()) == MULTIPART_HEADERS
    assert message["Subject"] == header_text(subject_template.replace("{{ city }}", city))
    assert message["Message-ID"] == "<m7.r5@example.com>"
    assert message["Date"].datetime == datetime.fromtimestamp(NOW, timezone.utc)
    assert str(message["From"]) == "News <news@example.com>"

    (to,) = message["To"].addresses
    assert unescape_surrogates(to.username) == as_mailbox(local)
    assert to.domain == "example.com"
    shown = " ".join(header_text(name).split())
    assert rfc2047_display_name(raw, "To") == shown
    if raw_header(raw, "To").count("=?utf-8?b?") <= 1:  # see rfc2047_display_name
        assert to.display_name == shown
    for header in ("Subject", "To"):  # the parser finds nothing wrong but RFC 6532 addresses
        assert not [d for d in message[header].defects if "non-ascii" not in str(d).lower()], header

    normal_note = note.replace("\r\n", "\n").replace("\r", "\n")
    assert body(message, "plain") == f"Dear {name},\n{normal_note}\n"
    assert body(message, "html") == (
        f"<p>{html.escape(normal_note)}</p><p>{html.escape(city)}</p>\n"
    )


# --- over real SMTP ----------------------------------------------------------------------------


class _Keep:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(  # noqa: N802 (the name aiosmtpd calls)
        self, server: object, session: object, envelope: Envelope
    ) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


async def test_rendered_bytes_go_through_smtp_unchanged() -> None:
    """aiosmtplib dot-stuffs on the way out and aiosmtpd undoes it: the server gets our bytes."""
    template = build(
        subject="Grüße, {{ name }}",
        text=".\n.leading dot\n..two dots\n{{ city }}\n" + "x" * 300 + "\n",
        html="<p>\n.{{ city }}\n</p>",
    )
    raw = render(template, name="Zoë \"Q\" Ünal", city=".Oslo")
    handler = _Keep()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTPServer(handler, decode_data=False), "127.0.0.1", 0
    )
    try:
        port = server.sockets[0].getsockname()[1]
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
            await client.sendmail(template.sender, ["ann@example.org"], raw)
    finally:
        server.close()
        await server.wait_closed()
    (envelope,) = handler.envelopes
    assert envelope.mail_from == "news@example.com"
    assert envelope.rcpt_tos == ["ann@example.org"]
    assert envelope.original_content == raw
    message = parse(envelope.original_content)
    assert body(message, "plain") == ".\n.leading dot\n..two dots\n.Oslo\n" + "x" * 300 + "\n"
    assert body(message, "html") == "<p>\n..Oslo\n</p>\n"


def test_the_address_character_classes_are_exactly_the_rfc_6532_sets() -> None:
    """The classes for an internationalised local part and host name are written as "every
    character but" (fast to compile at each start); they must take exactly the characters the
    plain definitions take, checked over every code point."""
    from mailtower.core import compose

    atext = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
    plain = {
        "local part": (re.compile(rf"[{atext}\u0080-\U0010ffff]"), re.compile(compose._UTF8_ATEXT)),
        "host name": (re.compile(r"[\w\-\u0080-\U0010ffff]", re.ASCII), re.compile(compose._HOST_CHAR)),
    }
    for what, (defined, written) in plain.items():
        differ = [hex(c) for c in range(0x110000) if bool(defined.match(chr(c))) != bool(written.match(chr(c)))]
        assert not differ, f"{what}: {differ[:10]}"


# --- 7bit when the body allows it (issue 12: encoding was most of the rendering) -----------------


def part_of(raw: bytes, subtype: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, the part's raw body) of the text/<subtype> part."""
    part = next(p for p in parse(raw).walk() if p.get_content_type() == f"text/{subtype}")
    return part["Content-Transfer-Encoding"], part.get_payload(decode=False).encode("ascii")


def test_plain_ascii_bodies_go_unencoded_per_message() -> None:
    template = build(text="Hi {{ name }},\nsee you in {{ city }}.\n", html="<p class=\"x\">{{ city }} &amp; more</p>")
    raw = render(template, city="Oslo")
    assert part_of(raw, "plain") == ("7bit", b"Hi Ann Lee,\r\nsee you in Oslo.\r\n")
    assert part_of(raw, "html") == ("7bit", b'<p class="x">Oslo &amp; more</p>\r\n')
    assert_wire_format(raw)
    # A value that is not ASCII makes that message's parts quoted-printable, and only that message's.
    raw = render(template, city="Zürich")
    assert part_of(raw, "plain")[0] == part_of(raw, "html")[0] == "quoted-printable"
    assert body(parse(raw), "plain") == "Hi Ann Lee,\nsee you in Zürich.\n"
    assert body(parse(raw), "html") == '<p class="x">Zürich &amp; more</p>\n'
    assert part_of(render(template, city="Bergen"), "plain")[0] == "7bit"


@pytest.mark.parametrize(("text", "city", "why"), [
    ("Hi {{ city }}\n", "Oslo ", "a value leaves a space at the end of a line"),
    ("Hi {{ name }} {{ city }}\n", "", "an empty value leaves a space at the end of a line"),
    ("Hi {{ city }}\n", "x" * 978, "a filled line of 981 characters (sendmail splits lines over 990)"),
    ("Hi {{ city }}\n", "tab\there", "a tab"),
    ("Hi {{ city }}\n", "a\x7fb", "DEL"),
    ("Hi {{ city }}\n", "=_mailtower_", "the start of every boundary"),
    ("Hi {{ city }} \nmore\n", "Oslo", "the template's own trailing space"),
    ("Hi {{ city }}\n" + "y" * 981 + "\n", "Oslo", "the template's own long line"),
    ("Grüße {{ city }}\n", "Oslo", "the template is not ASCII"),
])
def test_what_7bit_does_not_allow_goes_quoted_printable(text: str, city: str, why: str) -> None:
    raw = render(build(text=text), city=city)
    assert raw.split(b"\r\n\r\n", 1)[0].endswith(b"Content-Transfer-Encoding: quoted-printable"), why
    intended = text.replace("{{ city }}", city).replace("{{ name }}", "Ann Lee")
    assert body(parse(raw), "plain") == intended
    assert all(len(line) <= 76 for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))


def test_a_value_holding_the_boundary_cannot_end_the_part() -> None:
    template = build(text="Hi {{ city }}\n", html="<p>{{ city }}</p>")
    assert template.boundary is not None
    for forged in (f"\n--{template.boundary}--\n", f"\n--{template.boundary}\nContent-Type: text/x\n\nboo"):
        message = parse(render(template, city=forged))
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        assert body(message, "plain") == f"Hi {forged}\n"


def test_a_line_of_980_characters_still_goes_unencoded() -> None:
    raw = render(build(text="{{ city }}\n"), city="x" * 980)
    assert part_of(raw, "plain") == ("7bit", b"x" * 980 + b"\r\n")
    assert_wire_format(raw)
