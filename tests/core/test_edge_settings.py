"""Trust at the edges, settings: every number is bounded whatever its source, an explicit config
must exist, named files are read with a bound, password files fail in one line, and a background
sender never gets a password literal that came from a file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailtower.core.config import ENV, Settings, load_settings
from mailtower.core.errors import UserError
from mailtower.core.lifecycle import Lifecycle
from mailtower.core.limits import parse_limit, read_limits, set_limits
from mailtower.core.operations import Draft, create_mailing
from mailtower.core.sender import Sender
from mailtower.core.sink import Sink
from mailtower.core.store import Store
from tests.helpers import Cli, recipients, wait_until, write_csv

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "mailer", "Fi1e-S3cret-pw"

NUMERIC_ENV = {var: name for var, name in ENV.items() if name in {
    "smtp_port", "smtp_timeout", "smtp_data_timeout", "connections", "rate", "messages_per_connection",
    "retry_base", "retry_max", "retry_max_age", "grace", "batch_size"}}
# Refused for every numeric setting, whatever it is.
ALWAYS_BAD = ["nan", "NaN", "inf", "-inf", "infinity", "1e400", "-1", "-0.5", "abc", "true", "0x10", "1_000",
              "9" * 5000, "4\n4", "١٢", "1e-400", "1e-320"]
# Refused for these in particular (too big, a fraction for a whole number, 0 where 0 means nothing).
SPECIFIC_BAD = {
    "smtp_port": ["0", "65536", "25.5"],
    "connections": ["0", "501", "100000000", "2.5"],
    "rate": ["0.001", "1000001"],
    "messages_per_connection": ["1.5", "1000001"],
    "batch_size": ["50001", "7.5"],
    "smtp_timeout": ["0", "3601", "0.05"],
    "smtp_data_timeout": ["0", "86400", "0.05"],
    "retry_base": ["0", "1e12", "0.001"],
    "retry_max": ["0", "1e12", "0.001"],
    "retry_max_age": ["0", "1e12", "0.001"],
    "grace": ["1e12"],
}


def refusal(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message, message
    return message


def load(environ: dict[str, str] | None = None, config: Path | None = None, **flags: object) -> Settings:
    return load_settings(flags, environ=environ or {}, config_path=config or Path(os.devnull))


def private(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    path.chmod(0o600)
    return path


# ---- 8: one validation for every numeric setting, whatever the source -----------------------------


def test_every_numeric_environment_variable_refuses_what_is_out_of_bounds() -> None:
    for var, name in NUMERIC_ENV.items():
        for raw in ALWAYS_BAD + SPECIFIC_BAD.get(name, []):
            message = refusal(load, {var: raw})
            assert message.startswith(f"{var}: "), message


def test_retry_base_nan_is_refused_and_run_returns_at_once(tmp_path: Path) -> None:
    # On the old code MAILTOWER_RETRY_BASE=nan was accepted: a deferred recipient then had no retry
    # time and `run --until-idle` never returned. Now `run` refuses before it starts.
    cli = Cli(tmp_path / "x.db", 2525, MAILTOWER_RETRY_BASE="nan")
    code, _, err = cli("run", "--until-idle")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailtower: MAILTOWER_RETRY_BASE: "), err
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--rate", "-5"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--rate", "inf"], "--rate"),
        (["--rate", "0.001"], "--rate"),
        (["--connections", "0"], "--connections"),
        (["--connections", "100000000"], "--connections"),
        (["--connections", "2.5"], "--connections"),
        (["--smtp-port", "70000"], "--smtp-port"),
        (["--smtp-port", "-1"], "--smtp-port"),
    ],
)
def test_global_flags_refuse_bad_numbers_naming_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    cli = Cli(tmp_path / "x.db", 2525)
    code, _, err = cli(*args, "status")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"mailtower: {flag}: "), err
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    "toml, where",
    [
        ("connections = true\n", "connections"),
        ("connections = 2.5\n", "connections"),
        ("connections = 100000000\n", "connections"),
        ("rate = nan\n", "rate"),
        ("rate = inf\n", "rate"),
        ("rate = -1\n", "rate"),
        ("retry_base = -inf\n", "retry_base"),
        ("retry_max = 0\n", "retry_max"),
        ("grace = nan\n", "grace"),
        ("batch_size = 1e9\n", "batch_size"),
        ('smtp_timeout = "nan"\n', "smtp_timeout"),
        ("smtp_port = [25]\n", "smtp_port"),
        ("[smtp]\nport = 0\n", "[smtp] port"),
        ("[smtp]\nconnections = true\n", "[smtp] connections"),
        ("[smtp]\nrate = nan\n", "[smtp] rate"),
        ("[smtp]\ntimeout = -inf\n", "[smtp] timeout"),
        ('[[relays]]\nhost = "a"\nport = 70000\n', "[[relays]] #1 port"),
        ('[[relays]]\nhost = "a"\nconnections = true\n', "[[relays]] #1 connections"),
        ('[[relays]]\nhost = "a"\nconnections = 2.5\n', "[[relays]] #1 connections"),
        ('[[relays]]\nhost = "a"\n[[relays]]\nhost = "b"\nrate = nan\n', "[[relays]] #2 rate"),
        ('[[relays]]\nhost = "a"\nrate = -5\n', "[[relays]] #1 rate"),
    ],
)
def test_toml_refuses_bad_numbers_naming_file_and_key(tmp_path: Path, toml: str, where: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml)
    message = refusal(load, config=config)
    assert message.startswith(f"{config} {where}: "), message


def test_relays_may_not_add_up_to_more_connections_than_the_bound(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("".join(f'[[relays]]\nhost = "r{i}"\nconnections = 400\n' for i in range(3)))
    assert "add up to 1200" in refusal(load, config=config)


def test_first_retry_wait_longer_than_the_longest_is_refused() -> None:
    message = refusal(load, {"MAILTOWER_RETRY_BASE": "7200", "MAILTOWER_RETRY_MAX": "60"})
    assert message.startswith("MAILTOWER_RETRY_BASE: ") and "MAILTOWER_RETRY_MAX" in message


def test_flags_given_in_code_go_through_the_same_check() -> None:
    assert refusal(load, rate=float("nan")).startswith("--rate: ")
    assert refusal(load, connections=True).startswith("--connections: ")
    assert refusal(load, smtp_port=2.0).startswith("--smtp-port: ")


def test_values_at_the_bounds_are_accepted(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('rate = 5\ngrace = 0\n[smtp]\nport = 65535\nconnections = 500\n'
                      '[[relays]]\nhost = "a"\nport = 1\nconnections = 250\nrate = 0.01\n')
    settings = load({"MAILTOWER_RETRY_BASE": "60", "MAILTOWER_RETRY_MAX": "60"}, config=config)
    assert (settings.rate, settings.grace, settings.smtp_port, settings.connections) == (5.0, 0.0, 65535, 500)
    assert isinstance(settings.rate, float) and settings.relays[0].rate == 0.01
    assert load(rate="1000000", connections="1").rate == 1e6
    assert load({"MAILTOWER_RATE": " 0 "}).rate == 0.0


# ---- 6: live limits have the same bounds; stored values out of bounds do not stop anything ------


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--connections", "100000000"),
        ("--connections", "true"),
        ("--rate", "0.001"),
        ("--rate", "nan"),
        ("--rate", "-1"),
        ("--rate-per-hour", "inf"),
        ("--rate-per-hour", "0.5"),
        ("--messages-per-connection", "-1"),
        ("--messages-per-connection", "1e3"),
    ],
)
def test_limits_command_refuses_out_of_bounds_and_stores_nothing(tmp_path: Path, flag: str, value: str) -> None:
    cli = Cli(tmp_path / "x.db", 2525)
    code, _, err = cli("limits", "--rate", "5", flag, value) if flag != "--rate" else cli("limits", flag, value)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"mailtower: {flag}: "), err
    assert json.loads(cli.ok("limits", "--json"))["changed_at"] == {}


def test_limits_and_settings_share_one_table() -> None:
    from mailtower.core.config import BOUNDS
    from mailtower.core.limits import LIMIT_BOUNDS

    for name, bound in LIMIT_BOUNDS.items():
        assert bound is BOUNDS[name]
    # The dialog names its own source; the command line its flag.
    assert refusal(parse_limit, "connections", "0", "Connections field") == "Connections field: '0' must be at least 1"
    assert refusal(parse_limit, "connections", "100000000").startswith("--connections: ")
    assert parse_limit("rate", "0") == 0.0 and parse_limit("connections", "500") == 500


@pytest.mark.timeout(60)
async def test_stored_limits_out_of_bounds_fall_back_to_configuration(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    people = write_csv(tmp_path / "p.csv", recipients(6))
    store = await Store.open(db)
    try:
        mailing_id, _ = await create_mailing(store, Draft("old", "Hi", "news@example.org", "Body", None), people,
                                             lambda r: None)
        await Lifecycle(store).send_now(mailing_id)
        # As an older version (or a hand-edited database) may have left them.
        await store.put_settings({"limit.connections": "100000000", "limit.rate": "nan",
                                  "limit.messages_per_connection": "-1", "limit.rate_per_hour": "abc"})
    finally:
        await store.close()
    with Sink() as sink:
        settings = load(db=db, smtp_port=sink.port, connections=2, rate=0)
        store = await Store.open(db)
        try:
            limits = await read_limits(store, settings)
        finally:
            await store.close()
        assert (limits.connections, limits.rate, limits.messages_per_connection, limits.rate_per_hour) == (2, 0, 1000, 0)
        assert limits.changed_at == {} and len(limits.ignored) == 4
        assert any("stored limit connections: '100000000' must be at most 500" in line for line in limits.describe())
        # The sender sends with the configuration instead of dying on the stored values.
        await Sender(settings).run(until_idle=True)
        assert set(sink.received()) == {r["email"] for r in recipients(6)}


async def test_set_limits_refuses_what_the_command_refuses(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "x.db")
    try:
        for changes in ({"connections": "100000000"}, {"rate": "0.001"}, {"rate": float("inf")}):
            refusal_message = ""
            try:
                await set_limits(store, changes)  # type: ignore[arg-type]
            except UserError as exc:
                refusal_message = str(exc)
            assert refusal_message, changes
        assert await store.get_settings() == {}
    finally:
        await store.close()


# ---- 21: an explicit config file must exist -----------------------------------------------------


def test_explicit_config_that_does_not_exist_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    cli = Cli(tmp_path / "x.db", 2525)
    code, _, err = cli("--config", str(missing), "status")
    assert (code, err) == (2, f"mailtower: --config: {missing} does not exist\n")
    code, _, err = Cli(tmp_path / "x.db", 2525, MAILTOWER_CONFIG=str(missing))("status")
    assert (code, err) == (2, f"mailtower: MAILTOWER_CONFIG: {missing} does not exist\n")
    assert not (tmp_path / "x.db").exists()
    # The default location may be absent.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-config-home"))
    monkeypatch.delenv("MAILTOWER_CONFIG", raising=False)
    assert load_settings(environ={}).config_path is None


def test_explicit_config_that_exists_is_read(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[smtp]\nconnections = 7\n")
    cli = Cli(tmp_path / "x.db", 2525)
    assert '"connections": 7' in cli.ok("--config", str(config), "limits", "--json")


# ---- 5: named files are read with a bound; non-regular files refused or read once -------------------


def test_config_file_is_read_with_a_bound(tmp_path: Path) -> None:
    config = tmp_path / "big.toml"
    config.write_text("# padding\n" * 120_000 + "rate = 1\n")  # 1.2 MB of comments: valid TOML
    message = refusal(load, config=config)
    assert str(config) in message and "limit is 1 MiB" in message


def test_config_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    code, _, err = Cli(tmp_path / "x.db", 2525)("--config", str(tmp_path), "status")
    assert (code, err) == (2, f"mailtower: --config: {tmp_path} is a directory, not a file\n")


@pytest.mark.timeout(20)
def test_config_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    message = refusal(load, config=fifo)  # the old code blocked for ever opening it
    assert message.startswith("config file: ") and "not a regular file" in message
    message = refusal(load_settings, environ={"MAILTOWER_CONFIG": str(fifo)})
    assert message.startswith("MAILTOWER_CONFIG: ")


def test_password_file_is_read_with_a_bound(tmp_path: Path) -> None:
    secret = private(tmp_path / "pw", "x" * (200 * 1024))
    message = refusal(load, {"MAILTOWER_SMTP_PASSWORD_FILE": str(secret)})
    assert message.startswith("MAILTOWER_SMTP_PASSWORD_FILE: ") and "limit" in message


# ---- 17: a password file that cannot be a password is one line ----------------------------------


def _password_file_cases(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    yield folder, "is a directory"
    yield private(tmp_path / "latin1", "pässword".encode("latin-1")), "not valid UTF-8"
    yield private(tmp_path / "empty", ""), "is empty"
    yield private(tmp_path / "blank", " \n\n"), "is empty"
    yield private(tmp_path / "two-lines", "first\nsecond\n"), "more than one line"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    yield fifo, "nobody opened this named pipe"  # no writer: waited on for WRITER_WAIT, never for ever
    yield tmp_path / "missing", "does not exist"


@pytest.mark.timeout(30)
def test_password_file_problems_are_one_line_naming_setting_and_file(tmp_path: Path) -> None:
    for path, problem in _password_file_cases(tmp_path):
        cli = Cli(tmp_path / "x.db", 2525, MAILTOWER_SMTP_PASSWORD_FILE=str(path), MAILTOWER_SMTP_TLS="starttls")
        code, _, err = cli("status")
        assert code == 2 and err.count("\n") == 1, (path, err)
        assert err.startswith(f"mailtower: MAILTOWER_SMTP_PASSWORD_FILE: {path}") and problem in err, err


@pytest.mark.timeout(30)
def test_relay_password_file_problems_name_the_relay(tmp_path: Path) -> None:
    for path, problem in _password_file_cases(tmp_path):
        config = tmp_path / "relays.toml"
        config.write_text(f'[[relays]]\nhost = "a"\ntls = "tls"\npassword_file = "{path}"\n')
        message = refusal(load, config=config)
        assert message.startswith(f"{config} [[relays]] #1 password_file: {path}") and problem in message


def password_pipe() -> Path:
    """What `MAILTOWER_SMTP_PASSWORD_FILE=<(pass show smtp)` names: a pipe already written and closed."""
    read_end, write_end = os.pipe()
    os.write(write_end, PASSWORD.encode() + b"\n")
    os.close(write_end)
    return Path(f"/dev/fd/{read_end}")


def test_password_from_a_pipe_is_read_once(tmp_path: Path) -> None:
    pipe = password_pipe()
    try:
        settings = load({"MAILTOWER_SMTP_PASSWORD_FILE": str(pipe)})
    finally:
        os.close(int(pipe.name))
    assert settings.smtp_password == PASSWORD and settings.smtp_password_file is None


def test_a_password_given_twice_is_refused(tmp_path: Path) -> None:
    secret = private(tmp_path / "pw", PASSWORD)
    message = refusal(load, {"MAILTOWER_SMTP_PASSWORD_FILE": str(secret), "MAILTOWER_SMTP_PASSWORD": "other"})
    assert message.startswith("MAILTOWER_SMTP_PASSWORD_FILE: ") and PASSWORD not in message


def test_control_characters_in_text_settings_are_refused() -> None:
    assert refusal(load, {"MAILTOWER_SMTP_HOST": "a\r\nRCPT TO:<x@y>"}).startswith("MAILTOWER_SMTP_HOST: ")
    message = refusal(load, {"MAILTOWER_SMTP_PASSWORD": "pw\nmore"})
    assert message.startswith("MAILTOWER_SMTP_PASSWORD: ") and "pw" not in message.split(":", 1)[1]


# ---- 22: the hand-off never carries a password that came from a file --------------------------------


def test_settings_environment_passes_the_file_not_the_password(tmp_path: Path) -> None:
    from mailtower.tui.app import settings_environment

    secret = private(tmp_path / "pw", PASSWORD + "\n")
    settings = load({"MAILTOWER_SMTP_PASSWORD_FILE": str(secret), "MAILTOWER_SMTP_USER": USER})
    env = settings_environment(settings)
    assert env["MAILTOWER_SMTP_PASSWORD_FILE"] == str(secret)
    assert all(PASSWORD not in value for value in env.values())
    # A password written in the TOML file stays there: the child reads the same file.
    config = tmp_path / "c.toml"
    config.write_text(f'[smtp]\npassword = "{PASSWORD}"\n')
    env = settings_environment(load(config=config))
    assert all(PASSWORD not in value for value in env.values()) and env["MAILTOWER_CONFIG"] == str(config)
    # A password given as a value is passed on as one (there is nothing else to pass).
    assert settings_environment(load({"MAILTOWER_SMTP_PASSWORD": PASSWORD}))["MAILTOWER_SMTP_PASSWORD"] == PASSWORD


def test_child_environment_drops_inherited_password_variables(tmp_path: Path) -> None:
    from mailtower.tui.app import child_environment

    secret = private(tmp_path / "pw", PASSWORD)
    settings = load({"MAILTOWER_SMTP_PASSWORD_FILE": str(secret)})
    env = child_environment(settings, {"MAILTOWER_SMTP_PASSWORD": PASSWORD, "PATH": "/bin"})
    assert "MAILTOWER_SMTP_PASSWORD" not in env and env["PATH"] == "/bin"


@pytest.fixture
def tls_sink(tmp_path: Path) -> Iterator[tuple[Sink, Path]]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with Sink(tls_context=ctx, credentials=(USER, PASSWORD)) as sink:
        yield sink, ca_file


def _process_text(pid: int) -> bytes:
    """The environment and command line of a running process, as the kernel shows them."""
    return Path(f"/proc/{pid}/environ").read_bytes() + Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["file", "pipe"])
async def test_background_sender_gets_the_file_never_the_password(
    tmp_path: Path, tls_sink: tuple[Sink, Path], source: str
) -> None:
    from mailtower.tui.app import handoff_log_path, launch_background_sender

    sink, ca_file = tls_sink
    n = 12
    db = tmp_path / "handoff.db"
    store = await Store.open(db)
    try:
        people = write_csv(tmp_path / "p.csv", recipients(n))
        mid, _ = await create_mailing(store, Draft("h", "Hi", "news@example.org", "Body", None), people, lambda r: None)
        await Lifecycle(store).send_now(mid)
    finally:
        await store.close()
    if source == "file":
        secret = private(tmp_path / "pw", PASSWORD + "\n")
    else:
        secret = password_pipe()
    env = {"MAILTOWER_DB": str(db), "MAILTOWER_SMTP_HOST": "127.0.0.1", "MAILTOWER_SMTP_PORT": str(sink.port),
           "MAILTOWER_SMTP_TLS": "starttls", "MAILTOWER_SMTP_USER": USER, "MAILTOWER_SMTP_CA_FILE": str(ca_file),
           "MAILTOWER_SMTP_PASSWORD_FILE": str(secret), "MAILTOWER_RATE": "8", "MAILTOWER_SMTP_CONNECTIONS": "1"}
    try:
        settings = load(env)
    finally:
        if source == "pipe":
            os.close(int(secret.name))
    assert settings.smtp_password == PASSWORD
    proc: subprocess.Popen[bytes] = launch_background_sender(settings)
    try:
        # The kernel shows the new environment a moment after exec; until then it reads as empty.
        seen: list[bytes] = []
        wait_until(lambda: seen.append(_process_text(proc.pid)) or b"MAILTOWER_DB=" in seen[-1], timeout=10,
                   what="the child's environment")
        assert PASSWORD.encode() not in seen[-1]
        wait_until(lambda: proc.poll() is not None, timeout=60, what="the background sender to finish")
        log = handoff_log_path(settings).read_text(errors="replace")
        assert proc.returncode == 0, log
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert set(sink.received()) == {r["email"] for r in recipients(n)}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state, sent FROM mailings").fetchone() == ("completed", n)


# ---- uvloop is a normal dependency ---------------------------------------------------------------


def test_uvloop_is_a_dependency_where_supported_and_fast_still_exists() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("uvloop") and "sys_platform != 'win32'" in d for d in project["dependencies"])
    assert "fast" in project["optional-dependencies"]


# ---- the relay's host ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_relay_host_is_refused_wherever_it_is_given(tmp_path: Path, host: str) -> None:
    """An empty host passed every command; `run` then warned "mail to  goes unencrypted" and waited
    for ever, sending nothing, on a relay it could not name. (An empty variable is an unset one.)"""
    if host:
        assert "the relay's host is empty" in refusal(load, {"MAILTOWER_SMTP_HOST": host})
    assert refusal(load, smtp_host=host).startswith("--smtp-host: ")
    config = tmp_path / "relay.toml"
    config.write_text(f'[smtp]\nhost = "{host}"\n', encoding="utf-8")
    assert "the relay's host is empty" in refusal(load, config=config)
    pool = tmp_path / "pool.toml"
    pool.write_text(f'[[relays]]\nhost = "127.0.0.1"\n\n[[relays]]\nhost = "{host}"\n', encoding="utf-8")
    message = refusal(load, config=pool)
    assert "#2" in message and ("the relay's host is empty" in message or "a relay needs a host" in message)


def test_plain_text_to_a_remote_relay_is_refused_in_one_line_without_a_warning_before_it(tmp_path: Path) -> None:
    """The refusal came after a warning that said the mail "goes unencrypted
    (MAILTOWER_SMTP_ALLOW_PLAIN)", which was not set: two lines, the first one wrong."""
    from mailtower.core.config import security_warnings

    settings = load({"MAILTOWER_SMTP_HOST": "mail.example.net", "MAILTOWER_SMTP_TLS": "none"})
    assert security_warnings(settings) == []
    allowed = load({"MAILTOWER_SMTP_HOST": "mail.example.net", "MAILTOWER_SMTP_TLS": "none", "MAILTOWER_SMTP_ALLOW_PLAIN": "1"})
    assert security_warnings(allowed) == ["mail to mail.example.net goes unencrypted (MAILTOWER_SMTP_ALLOW_PLAIN)"]
    code, out, err = Cli(tmp_path / "m.db", MAILTOWER_SMTP_HOST="mail.example.net", MAILTOWER_SMTP_TLS="none")(
        "run", "--until-idle")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a loopback address" in err


def test_a_toml_switch_may_be_written_1_or_0(tmp_path: Path) -> None:
    """`allow_special_domains = 1` was refused as "1 is not one of true, false, 1, 0, ...": the
    words the line offered were the ones written, as a TOML integer."""
    config = tmp_path / "switch.toml"
    config.write_text("allow_special_domains = 1\n", encoding="utf-8")
    assert load(config=config).allow_special_domains is True
    config.write_text("allow_special_domains = 0\n", encoding="utf-8")
    assert load(config=config).allow_special_domains is False
    config.write_text("allow_special_domains = 2\n", encoding="utf-8")
    assert "2 is not one of true, false" in refusal(load, config=config)


@pytest.mark.parametrize("args", [["--config", "", "status"], ["remaining", "1", "-o", ""], ["run", "--log", ""],
                                  ["suppress", "import", ""], ["import", "1", ""]])
def test_an_empty_file_name_is_said_to_be_one(tmp_path: Path, args: list[str]) -> None:
    """Path("") is ".": an empty --config, -o or --log was refused as "'.' is a directory"."""
    code, _, err = Cli(tmp_path / "m.db")(*args)
    assert code == 2 and "an empty path is not a file name" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("source", "value"), [
    ("MAILTOWER_SMTP_HOST", "evil\u202egro.elpmaxe"), ("MAILTOWER_DKIM_KEY_FILE", "/keys/key\u202emep.txt"),
    ("MAILTOWER_SMTP_HOST", "relay\u2066.example.org"), ("TOML relay name", "mx-\u202e"),
])
def test_a_setting_with_a_direction_override_is_refused(tmp_path: Path, source: str, value: str) -> None:
    """A host or a path is echoed in warnings and errors, where U+202E shows "evil\u202egro.elpmaxe"
    as "evil...example.org": refused like a control character, and named escaped."""
    if source.startswith("TOML"):
        config = tmp_path / "m.toml"
        config.write_text(f'[[relays]]\nname = "{value}"\nhost = "127.0.0.1"\n', encoding="utf-8")
        with pytest.raises(UserError, match="direction override") as caught:
            load(config=config)
    else:
        with pytest.raises(UserError, match="direction override") as caught:
            load({source: value, "MAILTOWER_DKIM_DOMAIN": "example.org", "MAILTOWER_DKIM_SELECTOR": "s1"})
    assert "\u202e" not in str(caught.value) and "\u2066" not in str(caught.value)
    assert load({"MAILTOWER_SMTP_PASSWORD": "pa\u202ess"}).smtp_password == "pa\u202ess"  # a secret is not shown
