"""Choosing PostgreSQL (issue 15 item 1): --db, MAILTOWER_DB and the config file's db; the URL is
shown without its password everywhere; bad URLs, a missing driver and a server that refuses are
one line each, exit 2, naming where the value came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailtower.core.config import load_settings
from mailtower.core.db_target import PgTarget, parse_pg_url, parse_target, redact_url
from mailtower.core.errors import UserError
from mailtower.core.sink import free_port
from mailtower.core.store import open_store
from tests.helpers import Cli
from tests.pg_server import PASSWORD, PASSWORD_USER

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("text", [
    f"postgresql://alice:{SECRET}@db.example.org:5433/mail?sslmode=require",
    f"postgres://alice:{SECRET}@db.example.org/mail",
    f"POSTGRESQL://alice:{SECRET}@[::1]:5432/mail",
    f"postgresql://alice@db.example.org/mail?password={SECRET}&application_name=x",
    f"postgresql://alice:{SECRET}@/mail?host=/run/postgresql",
])
def test_a_url_is_a_pg_target_whose_every_printed_form_hides_the_password(text: str) -> None:
    target = parse_target(text, "--db")
    assert isinstance(target, PgTarget)
    assert target.url.partition("://")[2] == text.partition("://")[2]  # the driver gets everything (scheme in lower case: libpq knows only that)
    for shown in (str(target), f"{target}", target.display):
        assert SECRET not in shown and shown.startswith("postgresql://")
    assert SECRET not in repr(target) and SECRET not in json.dumps({"db": str(target)})
    assert "alice" in str(target)


def test_anything_else_stays_a_sqlite_path() -> None:
    for text in ("mailtower.db", "./postgresql/x.db", "postgresql.db", "/tmp/postgres:x.db", "sqlite:///x.db"):
        assert parse_target(text, "--db") == Path(text).expanduser()


@pytest.mark.parametrize(("text", "words"), [
    (f"postgresql://alice:{SECRET}@host:99999/db", "port 99999 is not a number from 1 to 65535"),
    (f"postgresql://alice:{SECRET}@host:port/db", "the port 'port' is not a number"),
    (f"postgresql://alice:{SECRET}@host/db#frag", "no #fragment"),
    (f"postgresql://alice:{SECRET}@host/db\x07", "control character"),
    (f"postgresql://alice:{SECRET}@host/my db", "cannot contain spaces"),
    (f"postgresql://alice:{SECRET}@host/a/b", "contains '/'"),
])
def test_a_bad_url_is_one_line_naming_the_source_without_the_password(text: str, words: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_pg_url(text, "MAILTOWER_DB")
    message = str(caught.value)
    assert message.startswith("MAILTOWER_DB: ") and words in message
    assert SECRET not in message and "\n" not in message


def test_redact_url_removes_passwords_from_driver_text() -> None:
    text = f'connection to "postgresql://bob:{SECRET}@h/db" failed'
    assert SECRET not in redact_url(text) and "postgresql://bob@h/db" in redact_url(text)


def test_every_source_selects_postgres_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('db = "postgresql://fromfile@h/one"\n', encoding="utf-8")
    from_file = load_settings({}, {}, config, config_flag="--config")
    assert isinstance(from_file.db, PgTarget) and from_file.db.display == "postgresql://fromfile@h/one"
    from_env = load_settings({}, {"MAILTOWER_DB": "postgres://fromenv@h/two"}, config, config_flag="--config")
    assert str(from_env.db) == "postgresql://fromenv@h/two"
    from_flag = load_settings({"db": str(tmp_path / "x.db")}, {"MAILTOWER_DB": "postgres://fromenv@h/two"}, config,
                              config_flag="--config")
    assert from_flag.db == tmp_path / "x.db"
    default = load_settings({}, {}, Path(os.devnull))
    assert isinstance(default.db, Path) and default.db.name == "mailtower.db"


def test_a_bad_url_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'db = "postgresql://u:{SECRET}@h:0/db"\n', encoding="utf-8")
    code, out, err = Cli(Path("unused.db"))("--config", str(config), "status")
    assert code == 2 and out == ""
    assert str(config) in err and "port 0" in err and SECRET not in err and err.count("\n") == 1


def test_a_bad_db_flag_is_one_line_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = Cli(tmp_path / "x.db")("--db", f"postgresql://u:{SECRET}@h:70000/db", "status")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("mailtower: --db: ") and "70000" in err and SECRET not in err
    assert list(tmp_path.iterdir()) == []


def test_without_the_driver_one_line_names_the_extra(tmp_path: Path) -> None:
    # The driver is not importable in this child (psycopg set to None in sys.modules): as if the
    # extra had not been installed.
    script = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "from mailtower.tui.cli import main\n"
        f"sys.exit(main(['--db', 'postgresql://user:{SECRET}@127.0.0.1:1/db', 'status']))\n"
    )
    env = {**os.environ, "MAILTOWER_CONFIG": os.devnull}
    for args in (["-c", script], ["-c", script.replace("'status'", "'run', '--until-idle'")]):
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == ("mailtower: database postgresql://user@127.0.0.1:1/db: PostgreSQL support is not "
                               "installed; pip install 'mailtower[postgres]'\n")


def test_a_server_that_is_down_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody:{SECRET}@127.0.0.1:{free_port()}/mail"
    for command in (["status"], ["run", "--until-idle"], ["status", "--json"]):
        code, out, err = Cli(parse_pg_url(url, "test"))(*command)
        assert code == 2 and out == "", err
        assert err.count("\n") == 1 and "Traceback" not in err and SECRET not in err
        assert "database postgresql://nobody@127.0.0.1:" in err and "not running" in err


def test_a_wrong_password_is_one_line_saying_authentication_failed(pg_server, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    wrong = f"postgresql://{PASSWORD_USER}:{SECRET}@127.0.0.1:{pg_server.port}/{database}"
    code, out, err = Cli(parse_pg_url(wrong, "test"))("status")
    assert code == 2 and "authentication failed" in err and SECRET not in err and err.count("\n") == 1
    right = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_server.port}/{database}"
    code, out, err = Cli(parse_pg_url(right, "test"))("status", "--json")
    assert code == 0 and PASSWORD not in out + err


def test_a_missing_database_and_a_missing_user_say_which(pg_server) -> None:
    missing_db = f"postgresql://mailtower@127.0.0.1:{pg_server.port}/no_such_db"
    code, _, err = Cli(parse_pg_url(missing_db, "test"))("status")
    assert code == 2 and "the database does not exist" in err and err.count("\n") == 1
    missing_user = f"postgresql://ghost@127.0.0.1:{pg_server.port}/postgres"
    code, _, err = Cli(parse_pg_url(missing_user, "test"))("status")
    assert code == 2 and "the user does not exist" in err and err.count("\n") == 1


async def test_open_store_on_a_down_server_raises_one_user_error() -> None:
    with pytest.raises(UserError) as caught:
        await open_store(parse_pg_url(f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/x", "test"))
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)
