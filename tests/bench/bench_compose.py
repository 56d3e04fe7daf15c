"""Renders per second of core.compose for a 2 KB text+HTML message with two merge fields.

Run: .venv/bin/python tests/bench/bench_compose.py [N]
Prints the rate of MessageTemplate.render and, for comparison, of building an EmailMessage per
recipient (the approach issue 6 says caps a sender at a few hundred messages a second).
"""

from __future__ import annotations

import sys
import time
from email.message import EmailMessage
from email.policy import SMTP

from mailtower.core.compose import MessageTemplate

PARAGRAPH = (
    "We are writing to tell you about the changes to our opening hours this autumn. "
    "From next month the shop opens an hour earlier on weekdays.\n"
)
TEXT = "Hello {{ name }},\n\n" + PARAGRAPH * 5 + "See you soon in {{ city }}!\n-- \nThe team\n"
HTML = (
    "<html><body><p>Hello {{ name }},</p>\n"
    + ("<p>" + PARAGRAPH.strip() + "</p>\n") * 5
    + "<p>See you soon in <b>{{ city }}</b>!</p></body></html>\n"
)
SUBJECT = "{{ name }}, our new opening hours"
FROM = "The Shop <news@shop.example>"
CITIES = ["Berlin", "Köln", "Paris", "Zürich", "Lyon"]


def recipients(n: int) -> list[tuple[int, str, str, dict[str, str]]]:
    return [
        (i, f"user{i}@example.org", f"User Number {i}", {"city": CITIES[i % 5]}) for i in range(n)
    ]


def bench_compose(rows: list[tuple[int, str, str, dict[str, str]]], html: str = HTML) -> float:
    template = MessageTemplate.build(
        mailing_id=1, subject=SUBJECT, from_addr=FROM, text=TEXT, html=html,
        available_fields=["city"],
    )
    render = template.render
    start = time.perf_counter()
    for rid, email, name, fields in rows:
        render(recipient_id=rid, email=email, name=name, fields=fields)
    return len(rows) / (time.perf_counter() - start)


def bench_email_message(rows: list[tuple[int, str, str, dict[str, str]]]) -> float:
    start = time.perf_counter()
    for rid, email, name, fields in rows:
        msg = EmailMessage()
        msg["From"] = FROM
        msg["To"] = f"{name} <{email}>"
        msg["Subject"] = SUBJECT.replace("{{ name }}", name)
        msg["Message-ID"] = f"<m1.r{rid}@shop.example>"
        msg.set_content(TEXT.replace("{{ name }}", name).replace("{{ city }}", fields["city"]))
        msg.add_alternative(
            HTML.replace("{{ name }}", name).replace("{{ city }}", fields["city"]), subtype="html"
        )
        msg.as_bytes(policy=SMTP)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rows = recipients(n)
    size = len(
        MessageTemplate.build(
            mailing_id=1, subject=SUBJECT, from_addr=FROM, text=TEXT, html=HTML,
            available_fields=["city"],
        ).render(recipient_id=1, email=rows[1][1], name=rows[1][2], fields=rows[1][3])
    )
    rates = sorted(bench_compose(rows) for _ in range(3))
    print(f"message size: {size} bytes (templates: text {len(TEXT)}, html {len(HTML)} chars)")
    print(f"MessageTemplate.render: {rates[1]:,.0f} renders/s (median of 3 x {n:,})")
    # Minified HTML is one long line, so all of it is encoded again for every recipient.
    one_line = sorted(bench_compose(rows, HTML.replace("\n", "")) for _ in range(3))
    print(f"  with the HTML on one line: {one_line[1]:,.0f} renders/s")
    baseline = bench_email_message(rows[: max(n // 50, 200)])
    slower = rates[1] / baseline
    print(f"EmailMessage per recipient: {baseline:,.0f} messages/s ({slower:.0f}x slower)")


if __name__ == "__main__":
    main()
