"""The words of the Restart confirmation, which says what tripped when the breaker stopped it.

The dialog itself is the shared ConfirmDialog (destructive: it opens on "Keep stopped"; only its
own key, r, or Tab to the button restarts)."""

from __future__ import annotations

from mailtower.core.display import safe
from mailtower.core.domain import Mailing


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def restart_question(mailing: Mailing, name: str) -> tuple[str, str]:
    """(title, message) of the Restart confirmation."""
    remaining = plural(mailing.remaining, "remaining recipient")
    if not mailing.tripped:
        return ("Restart sending",
                f"Restart “{name}”? It joins the bottom of the queue and sends to its {remaining} only.")
    return (
        "Restart after the breaker tripped",
        f"The breaker stopped “{name}”:\n{safe(mailing.tripped)}\n\n"
        f"Restart it anyway? It joins the bottom of the queue and sends to its {remaining} only; "
        "the breaker starts a fresh window.",
    )
