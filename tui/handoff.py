"""Handing sending off to a background `mailtower run` when the dashboard leaves.

What lives here: the environment that reproduces the operator's settings in a child process
(`settings_environment`, `child_environment`, with the password travelling the way it came), the
command line of that child (`handoff_command`), where it logs (`handoff_log_path`), and starting
it detached from the terminal (`launch_background_sender`). No Textual import: the CLI and tests
use these without a dashboard.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from mailtower.core.config import (
    CONFIG_ENV,
    ENV,
    NO_CONFIG,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    SecretOrigin,
    Settings,
    default_db_path,
)
from mailtower.core.db_target import PgTarget

CHILD_STDIN = "/dev/stdin"  # where a background sender reads a password that came from a pipe


def settings_environment(settings: Settings) -> dict[str, str]:
    """MAILTOWER_* variables that reproduce `settings` in a child process.

    The password travels the way it came: a literal only if it was given as one. When it came from
    a file the child is told the file; from the TOML file, the child reads that file again; from a
    pipe, the child reads it on its stdin (see `launch_background_sender`)."""
    env: dict[str, str] = {}
    for var, name in ENV.items():
        if name in ("smtp_password", "smtp_password_file"):
            continue
        value = getattr(settings, name)
        if isinstance(value, PgTarget):
            env[var] = value.url  # the full URL in the environment, never on a command line (ps shows those)
        elif isinstance(value, bool):
            env[var] = "true" if value else "false"
        else:
            env[var] = str(value)
    origin = settings.smtp_password_origin
    if origin is SecretOrigin.FILE and settings.smtp_password_file is not None:
        env[PASSWORD_FILE_ENV] = str(settings.smtp_password_file)
    elif origin is SecretOrigin.STREAM:
        env[PASSWORD_FILE_ENV] = CHILD_STDIN
    elif settings.smtp_password and not (origin is SecretOrigin.CONFIG and settings.config_path is not None):
        env[PASSWORD_ENV] = settings.smtp_password
    # The child reads the same TOML file, or none when the parent read none.
    env[CONFIG_ENV] = str(settings.config_path or NO_CONFIG)
    return env


def child_environment(settings: Settings, inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of a background sender: ours, without any password variable we did not
    choose (so a file-sourced password never becomes a literal there), plus `settings_environment`."""
    env = {k: v for k, v in inherited.items() if k not in (PASSWORD_ENV, PASSWORD_FILE_ENV)}
    return {**env, **settings_environment(settings)}


def handoff_command(settings: Settings) -> list[str]:
    config = ["--config", str(settings.config_path)] if settings.config_path else []
    # --log: the sender's INFO lines (started, finished a mailing, waiting, stopped) go to the same
    # file as its stderr, with timestamps (see cli.sender_logging).
    # A PostgreSQL URL (it may hold a password) reaches the child as MAILTOWER_DB (settings_environment).
    db = [] if isinstance(settings.db, PgTarget) else ["--db", str(settings.db)]
    return [sys.executable, "-m", "mailtower.tui.cli", *db, *config, "run", "--until-idle",
            "--log", str(handoff_log_path(settings))]


def handoff_log_path(settings: Settings) -> Path:
    if isinstance(settings.db, PgTarget):
        # No file beside a server's database: the log goes to the user's data directory, named
        # after the database (its URL without the password, made a file name).
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", settings.db.display.split("://", 1)[1])[:120]
        return default_db_path().with_name(f"postgresql-{name}.run.log")
    return settings.db.with_name(settings.db.name + ".run.log")


def launch_background_sender(settings: Settings) -> subprocess.Popen[bytes]:
    """Start a detached `mailtower run` that outlives this terminal; it exits once nothing is left."""
    log_path = handoff_log_path(settings)
    if isinstance(settings.db, PgTarget):
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the user's data directory
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    piped = settings.smtp_password_origin is SecretOrigin.STREAM
    try:
        proc = subprocess.Popen(
            handoff_command(settings),
            stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=child_environment(settings, os.environ),
            start_new_session=True,  # a new session: the terminal's SIGHUP does not reach it
            close_fds=True,
        )
    finally:
        os.close(fd)
    if piped and proc.stdin is not None:
        # A password read from a pipe cannot be read again by the child: hand it over the same way.
        # It was read with a bound of MAX_SECRET_BYTES (64 KiB), which a pipe's buffer holds whole,
        # so this write does not wait for the child.
        try:
            proc.stdin.write(settings.smtp_password.encode("utf-8"))
        except OSError:
            pass  # the child is already gone; its log says why
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
    return proc
