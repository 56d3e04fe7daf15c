"""The event loop every front end runs on: uvloop where it is installed (the `fast` extra), else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)  # type: ignore[no-any-return]


def run_app(app: Any) -> None:
    """Run a Textual app on the same kind of loop as the headless sender."""
    loop = new_event_loop()
    try:
        app.run(loop=loop)
    finally:
        loop.close()
