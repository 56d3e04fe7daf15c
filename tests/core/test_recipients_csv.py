"""The streaming recipient CSV reader: structure, row rejects with line numbers, header injection."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtower.core.domain import ImportedRow, RejectedRow
from mailtower.core.errors import ImportRejected, UserError
from mailtower.core.recipients_csv import (
    MAX_LINE_BYTES,
    InvalidAddress,
    normalize_address,
    read_header,
    read_recipients,
)


def write(tmp_path: Path, content: str | bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read(path: Path, **kwargs: object) -> tuple[list[ImportedRow], list[RejectedRow]]:
    rejected: list[RejectedRow] = []
    rows = list(read_recipients(path, on_reject=rejected.append, **kwargs))  # type: ignore[arg-type]
    return rows, rejected


def rejected_message(path: Path) -> str:
    with pytest.raises(ImportRejected) as caught:
        read(path)
    assert isinstance(caught.value, UserError)
    return caught.value.message


# --- the good path -----------------------------------------------------------------------------


def test_plain_file_with_merge_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name,tz,City, Plan \na@example.com,Ann,Europe/Paris,Paris,gold\n")
    rows, rejected = read(path)
    assert rejected == []
    assert rows == [
        ImportedRow(line=2, email="a@example.com", name="Ann", tz="Europe/Paris",
                    fields={"City": "Paris", "Plan": "gold"})
    ]


def test_bom_crlf_and_case_insensitive_reserved_columns(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf EMAIL ,Name,TZ,x\r\nb@Example.COM,Bo,,1\r\n")
    assert read_header(path) == ["EMAIL", "Name", "TZ", "x"]
    rows, rejected = read(path)
    assert rejected == []
    assert rows == [ImportedRow(line=2, email="b@example.com", name="Bo", tz="", fields={"x": "1"})]


def test_empty_lines_and_blank_rows_are_skipped_silently(tmp_path: Path) -> None:
    path = write(tmp_path, "\n\nemail,name\n\na@example.com,A\n,\n   \n\r\nb@example.com,B\n\n")
    rows, rejected = read(path)
    assert rejected == []
    assert [(r.line, r.email) for r in rows] == [(5, "a@example.com"), (9, "b@example.com")]


def test_short_rows_are_padded_with_empty_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name,city\na@example.com\n")
    rows, _ = read(path)
    assert rows == [ImportedRow(line=2, email="a@example.com", name="", tz="", fields={"city": ""})]


def test_normalized_address_is_stored(tmp_path: Path) -> None:
    path = write(tmp_path, "email\n  Some.One@EXAMPLE.org \nPostmaster@Example.org\nü@bücher.de\n")
    rows, rejected = read(path)
    assert rejected == []
    assert [r.email for r in rows] == ["Some.One@example.org", "postmaster@example.org", "ü@bücher.de"]


def test_quoted_multiline_fields_keep_physical_line_numbers(tmp_path: Path) -> None:
    content = (
        "email,note\r\n"
        'a@example.com,"two\r\nlines"\r\n'      # lines 2-3
        'bad-address,"three\nphysical\nlines"\n'  # lines 4-6
        "c@example.com,plain\n"                  # line 7
        "also bad,x\n"                           # line 8
    )
    rows, rejected = read(write(tmp_path, content))
    assert [(r.line, r.fields["note"]) for r in rows] == [(2, "two\r\nlines"), (7, "plain")]
    assert [r.line for r in rejected] == [4, 8]


# --- row-level rejects ---------------------------------------------------------------------------


def test_malformed_addresses_are_reported_with_line_numbers(tmp_path: Path) -> None:
    content = "email,name\nok@example.com,A\nno-at-sign,B\n,C\nx@@example.com,D\ny@localhost,E\nz@exa mple.com,F\n"
    rows, rejected = read(write(tmp_path, content))
    assert [r.email for r in rows] == ["ok@example.com"]
    assert [r.line for r in rejected] == [3, 4, 5, 6, 7]
    assert rejected[0].reason.startswith("invalid email address 'no-at-sign': ")
    assert rejected[1].reason == "empty email"
    assert all("invalid email address" in r.reason for r in rejected[2:])


# (a NUL anywhere in the file is a structural error, tested below)
@pytest.mark.parametrize("breaker", ["\r", "\n", "\r\n", "\u2028", "\x85", "\x0b"])
def test_line_break_in_name_is_refused(tmp_path: Path, breaker: str) -> None:
    rows, rejected = read_rows_with_cell(tmp_path, "name", f"Eve{breaker}Bcc: victim@example.com")
    assert rows == []
    assert len(rejected) == 1 and rejected[0].line == 2 and "name" in rejected[0].reason


def test_line_break_in_subject_field_is_refused_only_when_listed(tmp_path: Path) -> None:
    path = write(tmp_path, 'email,product,note\na@example.com,"Shoes\r\nBcc: x@example.com","a\nb"\n')
    rows, rejected = read(path, header_fields={"product"})
    assert rows == []
    assert rejected == [RejectedRow(2, "field 'product' contains a line break or NUL (it is used in the subject)")]
    rows, rejected = read(path, header_fields={"other"})
    assert rejected == [] and rows[0].fields == {"product": "Shoes\r\nBcc: x@example.com", "note": "a\nb"}


def test_unknown_time_zone_is_refused_and_named(tmp_path: Path) -> None:
    path = write(tmp_path, "email,tz\na@example.com,Europe/Paris\nb@example.com,Mars/Olympus\nc@example.com,\n")
    checked: list[str] = []

    def valid_zone(zone: str) -> bool:
        checked.append(zone)
        return zone == "Europe/Paris"

    rows, rejected = read(path, valid_zone=valid_zone)
    assert [(r.email, r.tz) for r in rows] == [("a@example.com", "Europe/Paris"), ("c@example.com", "")]
    assert rejected == [RejectedRow(3, "unknown time zone 'Mars/Olympus'")]
    assert checked == ["Europe/Paris", "Mars/Olympus"]  # an empty tz is not a zone to check


def test_duplicates_are_left_to_the_store(tmp_path: Path) -> None:
    rows, rejected = read(write(tmp_path, "email\na@example.com\nA@EXAMPLE.COM\na@example.com\n"))
    assert rejected == [] and len(rows) == 3


def read_rows_with_cell(tmp_path: Path, column: str, value: str) -> tuple[list[ImportedRow], list[RejectedRow]]:
    quoted = '"' + value.replace('"', '""') + '"'
    return read(write(tmp_path, f"email,{column}\na@example.com,{quoted}\n"))


# --- structural errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = rejected_message(tmp_path / "nope.csv")
    assert "nope.csv" in message and "cannot read" in message
    with pytest.raises(ImportRejected):
        read_header(tmp_path / "nope.csv")


def test_directory_is_not_readable_as_a_file(tmp_path: Path) -> None:
    assert "cannot read" in rejected_message(tmp_path)


@pytest.mark.parametrize("content", ["", "\xef\xbb\xbf", "\n\r\n\n", ",,\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content.encode("latin-1"))
    assert "empty" in rejected_message(path)
    with pytest.raises(ImportRejected, match="empty"):
        read_header(path)


def test_missing_email_column(tmp_path: Path) -> None:
    path = write(tmp_path, "mail,name\na@example.com,A\n")
    message = rejected_message(path)
    assert message == f"{path}: line 1: the header has no 'email' column"
    with pytest.raises(ImportRejected, match="no 'email' column"):
        read_header(path)


@pytest.mark.parametrize(("header", "duplicate"), [("email,name,Email", "Email"), ("email,city,city", "city")])
def test_duplicate_columns(tmp_path: Path, header: str, duplicate: str) -> None:
    message = rejected_message(write(tmp_path, header + "\n"))
    assert f"line 1: duplicate column {duplicate!r}" in message


def test_case_variants_of_merge_fields_are_distinct(tmp_path: Path) -> None:
    assert read_header(write(tmp_path, "email,City,city\n")) == ["email", "City", "city"]


def test_unnamed_column(tmp_path: Path) -> None:
    assert "column 3 of the header has no name" in rejected_message(write(tmp_path, "email,name,\n"))


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    content = "email,name\na@example.com,Ann\n".encode() + b"b@example.com,Ren\xe9\nc@example.com,C\n"
    path = write(tmp_path, content)
    message = rejected_message(path)
    assert message.startswith(f"{path}: line 3: invalid UTF-8")
    assert "0xe9" in message


def test_invalid_utf8_after_a_multiline_field_counts_physical_lines(tmp_path: Path) -> None:
    content = 'email,note\na@example.com,"x\ny\nz"\n'.encode() + b"\xff@example.com,\n"
    assert "line 5: invalid UTF-8" in rejected_message(write(tmp_path, content))


def test_rows_before_a_structural_error_are_yielded_then_the_error_raises(tmp_path: Path) -> None:
    # The caller imports inside one transaction and rolls back on ImportRejected.
    path = write(tmp_path, "email\na@example.com\n".encode() + b"\xc3\x28\n")
    seen: list[str] = []
    with pytest.raises(ImportRejected, match="line 3"):
        for row in read_recipients(path, on_reject=lambda r: None):
            seen.append(row.email)
    assert seen == ["a@example.com"]


def test_nul_byte(tmp_path: Path) -> None:
    path = write(tmp_path, b"email,name\na@example.com,A\x00B\n")
    assert "line 2: contains a NUL byte" in rejected_message(path)


def test_more_cells_than_header_is_malformed(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\na@example.com,A\nb@example.com,B,extra\n")
    assert "line 3: 3 cells but the header has 2 columns" in rejected_message(path)


def test_unclosed_quote_names_the_row_start(tmp_path: Path) -> None:
    path = write(tmp_path, 'email,name\na@example.com,A\nb@example.com,"B\nmore\n')
    message = rejected_message(path)
    assert "line 3: malformed CSV" in message and "not closed" in message


def test_text_after_closing_quote_is_malformed(tmp_path: Path) -> None:
    assert "line 2: malformed CSV" in rejected_message(write(tmp_path, 'email,name\na@example.com,"A"B\n'))


def test_bare_carriage_return_line_endings(tmp_path: Path) -> None:
    message = rejected_message(write(tmp_path, "email,name\ra@example.com,A\r"))
    assert "line 1: malformed CSV" in message and "line endings" in message


def test_overlong_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = write(tmp_path, b"email\n" + b"a" * (MAX_LINE_BYTES + 10))
    assert f"line 2: longer than {MAX_LINE_BYTES} bytes" in rejected_message(path)


def test_header_problems_raise_on_first_iteration(tmp_path: Path) -> None:
    iterator = read_recipients(write(tmp_path, "name\n"), on_reject=lambda r: None)
    with pytest.raises(ImportRejected):
        next(iterator)


# --- the address fast path agrees with email_validator -------------------------------------------

_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-."
_local = st.text(alphabet=_ATEXT + "\"@ (),:;<>[\\]é", min_size=0, max_size=70)
_domain = st.one_of(
    st.sampled_from(["example.com", "EXAMPLE.com", "bücher.de", "xn--bcher-kva.de", "localhost",
                     "sub.example.co.uk", "-bad.com", "a..b.com", "example.com.", "[127.0.0.1]",
                     "x" * 64 + ".com", ("y" * 60 + ".") * 4 + "com", "exa_mple.com", ""]),
    st.from_regex(r"[a-z0-9.-]{1,20}\.[a-z]{2,4}", fullmatch=True),
    # host-name-like strings with the awkward cases: case, dashes, digits in the TLD, special-use
    # names, long labels, Punycode and reserved "ab--" labels
    st.builds(
        lambda labels, tld: ".".join(labels + [tld]),
        st.lists(st.from_regex(r"[A-Za-z0-9-]{0,66}", fullmatch=True), min_size=0, max_size=5),
        st.sampled_from(["com", "COM", "de", "c0m", "1", "x-y", "local", "localhost", "test", "onion",
                         "arpa", "in-addr.arpa", "invalid", "xn--p1ai", "ab--cd", "a", "museum"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(local=_local, domain=_domain)
def test_fast_path_matches_email_validator(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalize_address(address)
    except InvalidAddress:
        got = None
    assert got == expected


@pytest.mark.parametrize("local", ["a" * 64, "a" * 65, "b" * 200])
def test_fast_path_length_limits_match(local: str) -> None:
    for domain in ["example.com", ("y" * 60 + ".") * 3 + "com"]:
        address = f"{local}@{domain}"
        try:
            expected: str | None = validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError:
            expected = None
        try:
            got: str | None = normalize_address(address)
        except InvalidAddress:
            got = None
        assert got == expected, address
