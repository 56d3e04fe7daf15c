"""The one vocabulary of what an operator can do to a mailing: each lifecycle action once.

`ACTIONS` has one entry per `core.lifecycle.Action`: what the Actions menu, the command palette
and the `?` screen call it (`label`), the one line that says what it does (`summary`, also the
`mailtower` subcommand's description), the subcommand that does it (`command`), the question
the dashboard asks first (`confirm`) and whether it cannot be taken back (`destructive`).
Actions only the sender takes (promote, start, yield, complete) have entries too, with no key and
no command, so every action is accounted for once. `VIEWS` are the menu's entries that change
no mailing (Details, View remaining recipients, Resume sending, which asks first: RESUME_CONFIRM);
`MOVES` the four ways to move.

Which entries a mailing's menu offers (`offers`) follows its section and the seed's rules; the
rules themselves (who may go where) stay in core/lifecycle.py. Readers look entries up when
they draw, never copy them at import, so a label changed here changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from .domain import Mailing, MailingState, Section
from .lifecycle import TRANSITIONS, UNSCHEDULE_WHILE_SENDING, Action, Direction, Lifecycle, moved_order

S = MailingState


@dataclass(frozen=True, slots=True)
class Confirm:
    """The question the dashboard asks before an action: its title and its two buttons. It
    opens on `keep`; only the confirm button's own key does it (issue 11 item 1)."""

    title: str
    confirm: str
    keep: str


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """One action as the menu, the palette, the `?` screen and the command line all present it."""

    action: Action
    label: str  # the menu's, the palette's and the `?` screen's name for it
    summary: str  # one line: what it does (the subcommand's description too)
    command: str | None = None  # `mailtower COMMAND ID`; None when only the sender does it
    key: str | None = None  # the menu and palette key; None when it is not an operator's action
    confirm: Confirm | None = None
    destructive: bool = False
    asks_for_input: bool = False  # a dialog first (the schedule's wall time and zone)
    note: str = ""  # when it is not offered, in the `?` screen's words


ACTIONS: dict[Action, ActionEntry] = {
    Action.SCHEDULE: ActionEntry(
        Action.SCHEDULE, "Set Schedule", "schedule a mailing at a wall time in a time zone",
        command="schedule", key="schedule", asks_for_input=True,
    ),
    Action.UNSCHEDULE: ActionEntry(
        Action.UNSCHEDULE, "Cancel", "cancel a schedule; the mailing stays as a draft",
        command="unschedule", key="unschedule", destructive=True,
        confirm=Confirm("Cancel schedule", "Cancel schedule", "Keep schedule"),
        note="not while a mailing is being sent",
    ),
    Action.SEND_NOW: ActionEntry(
        Action.SEND_NOW, "Send now", "queue a draft, scheduled or stopped mailing at the bottom of the queue",
        command="send-now", key="send-now",
        # Risky: it starts a campaign, or brings one forward; what is sent cannot be called back.
        confirm=Confirm("Send now", "Send now", "Keep as it is"),
    ),
    Action.STOP: ActionEntry(
        Action.STOP, "Cancel sending", "stop a current mailing; its remaining recipients are kept",
        command="stop", key="stop", destructive=True,
        confirm=Confirm("Cancel sending", "Stop sending", "Keep sending"),
    ),
    Action.RESTART: ActionEntry(
        Action.RESTART, "Restart", "send a stopped mailing to its remaining recipients",
        command="restart", key="restart",
        confirm=Confirm("Restart sending", "Restart", "Keep stopped"),
    ),
    Action.DELETE: ActionEntry(
        Action.DELETE, "Delete", "delete an inactive mailing",
        command="delete", key="delete", destructive=True,
        confirm=Confirm("Delete mailing", "Delete", "Keep"),
    ),
    Action.RETRY: ActionEntry(
        Action.RETRY, "Retry failed", "send again to failed recipients whose failure may pass (never to suppressed ones)",
        command="retry", key="retry",
        confirm=Confirm("Retry failed", "Retry failed", "Keep as it is"),
        note="when some recipients failed",
    ),
    Action.MOVE: ActionEntry(
        Action.MOVE, "Move", "reorder the queue; prints the new position", command="move",
    ),
    Action.PROMOTE: ActionEntry(Action.PROMOTE, "Came due", "a due schedule joins the bottom of the queue (the sender)"),
    Action.START: ActionEntry(Action.START, "Started", "the head of the queue begins sending (the sender)"),
    Action.YIELD: ActionEntry(Action.YIELD, "Paused", "the sending mailing steps back in the queue (the sender)"),
    Action.COMPLETE: ActionEntry(Action.COMPLETE, "Completed", "every recipient was sent or failed (the sender)"),
}

# The four ways to move a current mailing in the queue (all Action.MOVE): key and label.
MOVES: dict[Direction, tuple[str, str]] = {
    Direction.UP: ("move-up", "Move up"),
    Direction.DOWN: ("move-down", "Move down"),
    Direction.TOP: ("move-top", "Move to top"),
    Direction.BOTTOM: ("move-bottom", "Move to bottom"),
}
MOVE_KEYS: dict[str, Direction] = {key: direction for direction, (key, _) in MOVES.items()}


@dataclass(frozen=True, slots=True)
class ViewEntry:
    """A menu entry that changes no state."""

    key: str
    label: str
    summary: str


VIEWS: dict[str, ViewEntry] = {
    "details": ViewEntry("details", "Details", "the mailing's counts, schedule, relays and timeline"),
    "remaining": ViewEntry("remaining", "View remaining recipients", "who has not received it, filterable and exportable"),
    "resume": ViewEntry("resume", "Resume sending", "ask the sender to try the paused relays again now"),
}


def entry_for(key: str) -> ActionEntry | None:
    """The entry of a menu or palette key ("stop", "move-up"); None for a view ("details")."""
    if key in MOVE_KEYS:
        return ACTIONS[Action.MOVE]
    return next((entry for entry in ACTIONS.values() if entry.key == key), None)


def command_entry(command: str) -> ActionEntry:
    """The entry of a `mailtower` subcommand ("stop" -> Action.STOP)."""
    return next(entry for entry in ACTIONS.values() if entry.command == command)


def label_of(key: str) -> str:
    """What the menu calls a key: "Cancel sending" for "stop", "Move up" for "move-up"."""
    if key in MOVE_KEYS:
        return MOVES[MOVE_KEYS[key]][1]
    if key in VIEWS:
        return VIEWS[key].label
    entry = entry_for(key)
    return entry.label if entry is not None else key


# The subcommands that take only a mailing id and make one transition, in `--help` order.
SIMPLE_COMMANDS = (Action.SEND_NOW, Action.UNSCHEDULE, Action.STOP, Action.RESTART, Action.DELETE)


async def carry_out(lifecycle: Lifecycle, action: Action, mailing_id: int, *, despite_trip: bool = False) -> None:
    """One of SIMPLE_COMMANDS on a mailing, through the lifecycle (which refuses what its rules
    forbid). `despite_trip`: send a mailing the breaker stopped again (core/breaker.py)."""
    if action is Action.SEND_NOW:
        await lifecycle.send_now(mailing_id, despite_trip=despite_trip)
    elif action is Action.RESTART:
        await lifecycle.restart(mailing_id, despite_trip=despite_trip)
    else:
        transitions = {Action.UNSCHEDULE: lifecycle.unschedule, Action.STOP: lifecycle.stop, Action.DELETE: lifecycle.delete}
        await transitions[action](mailing_id)


# ---- what a mailing's Actions menu offers -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    """One entry of the Actions menu: what, whether it can be done now, and if not, why."""

    key: str  # stable id: "stop", "move-up", "schedule", "send-now", "unschedule", "restart", "remaining", "delete", "details"
    label: str
    enabled: bool = True
    reason: str = ""
    destructive: bool = False


MOVES_UP = {MOVES[d][0]: MOVES[d][1] for d in (Direction.UP, Direction.TOP)}
MOVES_DOWN = {MOVES[d][0]: MOVES[d][1] for d in (Direction.DOWN, Direction.BOTTOM)}

# Each section's menu, in order: an Action (its entry), a view key, or "moves" (where they go).
SECTION_MENUS: dict[Section, tuple[Action | str, ...]] = {
    Section.CURRENT: (Action.STOP, "moves", "details"),
    Section.SCHEDULED: (Action.SCHEDULE, Action.SEND_NOW, Action.UNSCHEDULE, "details"),
    Section.INACTIVE: (
        Action.RESTART, "remaining", Action.RETRY, Action.SCHEDULE, Action.SEND_NOW, "details", Action.DELETE,
    ),
}

# Inactive mailings: which entries each state has (a draft has nothing to restart nor remaining).
_INACTIVE_ONLY: dict[Action | str, frozenset[MailingState]] = {
    Action.RESTART: frozenset({S.STOPPED}),
    "remaining": frozenset({S.STOPPED, S.COMPLETED}),
    Action.RETRY: TRANSITIONS[Action.RETRY][0],  # and only when some recipients failed
    Action.SCHEDULE: frozenset({S.DRAFT, S.STOPPED}),
    Action.SEND_NOW: frozenset({S.DRAFT, S.STOPPED}),
}


def offers(
    mailing: Mailing, *, any_sending: bool, place: int | None = None, queue_length: int | None = None
) -> list[Offer]:
    """The Actions menu of a mailing, as the seed describes it for its section; given its place
    (0-based, None when not queued) in a queue of `queue_length`, only the moves that move it."""
    found = _section_offers(mailing, any_sending=any_sending)
    return found if queue_length is None else queue_offers(found, place, queue_length)


def queue_offers(offers: list[Offer], index: int | None, count: int) -> list[Offer]:
    """The move entries that actually move the mailing at place `index` (0-based) of `count`.

    The head of the queue cannot go up nor the last one down, so those are not offered; Move to
    top / Move to bottom (which the `move` command has too) sit beside Move up / Move down.
    """
    if not any(o.key in MOVES_UP or o.key in MOVES_DOWN for o in offers):
        return offers
    moves: list[Offer] = []
    if index is not None and index > 0:
        moves += [Offer(key, label) for key, label in MOVES_UP.items()]
    if index is not None and index < count - 1:
        moves += [Offer(key, label) for key, label in MOVES_DOWN.items()]
    result: list[Offer] = []
    for offer in offers:
        if offer.key in MOVES_UP or offer.key in MOVES_DOWN:
            result += moves  # all moves at the place of the first one, in a fixed order
            moves = []
        else:
            result.append(offer)
    return result


def _section_offers(mailing: Mailing, *, any_sending: bool) -> list[Offer]:
    section = mailing.section
    items: list[Offer] = []
    for item in SECTION_MENUS[section]:
        if section is Section.INACTIVE and mailing.state not in _INACTIVE_ONLY.get(item, frozenset(S)):
            continue
        if item is Action.RETRY and not mailing.failed:
            continue
        if item == "moves":
            # Up and down here; queue_offers adds top and bottom where they move it.
            items += [Offer(MOVES[d][0], MOVES[d][1]) for d in (Direction.UP, Direction.DOWN)]
        elif isinstance(item, Action):
            items.append(_action_offer(ACTIONS[item], mailing, any_sending=any_sending))
        elif item == "details" and mailing.wave_group is not None and section is Section.SCHEDULED:
            items.append(Offer("details", "Details (next wave)"))
        else:
            items.append(Offer(VIEWS[item].key, VIEWS[item].label))
    return items


def _action_offer(entry: ActionEntry, mailing: Mailing, *, any_sending: bool) -> Offer:
    assert entry.key is not None
    label = entry.label
    if entry.action is Action.RESTART:
        label = f"{label} ({mailing.remaining:,} remaining)"
    elif entry.action is Action.RETRY:
        label = f"{label} ({mailing.failed:,} failed)"
    elif mailing.wave_group is not None and mailing.section is Section.SCHEDULED:
        # The row of a local-time schedule stands for all its waves (core/waves.py).
        label = WAVE_LABELS.get(entry.action, label)
    if entry.action is Action.UNSCHEDULE and any_sending:
        return Offer(entry.key, label, enabled=False, reason=UNSCHEDULE_WHILE_SENDING)
    return Offer(entry.key, label, destructive=entry.destructive)


# A local-time schedule's row in the Scheduled panel: its entries act on every wave.
WAVE_LABELS: dict[Action, str] = {
    Action.SCHEDULE: "Set Schedule (all waves)",
    Action.SEND_NOW: "Send all waves now",
    Action.UNSCHEDULE: "Cancel (all waves)",
}


# A move that changes which mailing is at the head of the queue (the one being sent, or sent next)
# asks first: Enter, Down, Enter on the second mailing would otherwise start it and send the one
# being sent back to wait. Moves behind the head are done at once.
MOVE_HEAD_CONFIRM = Confirm("Change what is sent first", "Move", "Keep the order")


def changes_head(order: list[int], mailing_id: int, direction: Direction, sending: int | None = None) -> bool:
    """Whether moving `mailing_id` in the queue `order` (mailing ids, head first) puts another
    mailing at its head, or changes which mailings are ahead of the one being sent (`sending`):
    a head waiting only for its retries stays first while the next one is sent, and a mailing
    moved ahead of that one would be sent instead."""
    new = moved_order(order, mailing_id, direction)
    if not order or not new:
        return False
    if new[0] != order[0]:
        return True
    return sending in order and set(order[:order.index(sending)]) != set(new[:new.index(sending)])


# Resume sending asks too: each try logs in again, and a relay that refused the login may lock
# the account after a few more.
RESUME_CONFIRM = Confirm("Resume sending", "Resume", "Keep paused")


def resume_offer() -> Offer:
    view = VIEWS["resume"]
    return Offer(view.key, view.label)


def section_labels(section: Section) -> list[tuple[str, str]]:
    """Every entry a section's menu can hold, as (label, note): what the `?` screen lists."""
    result: list[tuple[str, str]] = []
    for item in SECTION_MENUS[section]:
        if item == "moves":
            result += [(label, "") for _, label in MOVES.values()]
        elif isinstance(item, Action):
            result.append((ACTIONS[item].label, ACTIONS[item].note))
        else:
            result.append((VIEWS[item].label, ""))
    return result
