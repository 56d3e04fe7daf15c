"""Settings: command-line flags, then MAILTOWER_* environment variables, then a TOML file, then defaults."""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import platformdirs

from .errors import UserError

TLS_MODES = ("none", "starttls", "tls")


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("mailtower")) / "mailtower.db"


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("mailtower")) / "config.toml"


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """One relay of a pool, as the TOML config lists it under [[relays]]."""

    host: str
    port: int = 25
    tls: str = "starttls"
    user: str = ""
    password: str = field(default="", repr=False)
    connections: int = 4
    rate: float = 0.0
    verify: bool = True
    ca_file: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    db: Path = field(default_factory=default_db_path)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_tls: str = "none"  # none | starttls | tls
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_verify: bool = True  # verify TLS certificates
    smtp_ca_file: str = ""  # extra CA bundle (PEM) to trust, e.g. a private CA
    smtp_allow_plain: bool = False  # allow tls=none to a host that is not on a loopback address
    smtp_timeout: float = 60.0  # seconds for a command reply
    smtp_data_timeout: float = 300.0  # seconds for the reply to the final dot (RFC 5321 4.5.3.2.6)
    connections: int = 4
    rate: float = 0.0  # messages per second, 0 = unlimited
    messages_per_connection: int = 1000  # reconnect after this many (0 = never)
    helo_name: str = ""
    batch_size: int = 0  # rows claimed per transaction; 0 = derived from connections
    retry_base: float = 300.0  # first deferral wait, seconds
    retry_max: float = 3600.0  # longest deferral wait
    retry_max_age: float = 5 * 86400.0  # give up on a deferred recipient after this long
    connect_backoff_max: float = 60.0
    grace: float = 3600.0  # a schedule missed by less than this is still sent on start
    relays: tuple[RelaySpec, ...] = ()  # a pool of relays; empty means the one smtp_* relay
    allow_special_domains: bool = False  # accept .local, .test, ... addresses (internal networks)
    config_path: Path | None = None  # the TOML file these settings were read with (for child processes)

    def with_overrides(self, values: Mapping[str, Any]) -> "Settings":
        return replace(self, **{k: v for k, v in values.items() if v is not None})


# Environment variable -> setting name.
ENV: dict[str, str] = {
    "MAILTOWER_DB": "db",
    "MAILTOWER_SMTP_HOST": "smtp_host",
    "MAILTOWER_SMTP_PORT": "smtp_port",
    "MAILTOWER_SMTP_TLS": "smtp_tls",
    "MAILTOWER_SMTP_USER": "smtp_user",
    "MAILTOWER_SMTP_PASSWORD": "smtp_password",
    "MAILTOWER_SMTP_VERIFY": "smtp_verify",
    "MAILTOWER_SMTP_CA_FILE": "smtp_ca_file",
    "MAILTOWER_SMTP_ALLOW_PLAIN": "smtp_allow_plain",
    "MAILTOWER_SMTP_TIMEOUT": "smtp_timeout",
    "MAILTOWER_SMTP_DATA_TIMEOUT": "smtp_data_timeout",
    "MAILTOWER_SMTP_CONNECTIONS": "connections",
    "MAILTOWER_RATE": "rate",
    "MAILTOWER_MESSAGES_PER_CONNECTION": "messages_per_connection",
    "MAILTOWER_RETRY_BASE": "retry_base",
    "MAILTOWER_RETRY_MAX": "retry_max",
    "MAILTOWER_RETRY_MAX_AGE": "retry_max_age",
    "MAILTOWER_GRACE": "grace",
    "MAILTOWER_BATCH_SIZE": "batch_size",
    "MAILTOWER_ALLOW_SPECIAL_DOMAINS": "allow_special_domains",
}


def _convert(name: str, raw: Any, where: str) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = kinds.get(name)
    if kind is None:
        raise UserError(f"{where}: unknown setting '{name}'")
    try:
        if kind == "Path":
            return Path(str(raw)).expanduser()
        if kind == "int":
            value: Any = int(raw)
            if value < 0:
                raise ValueError
            return value
        if kind == "float":
            value = float(raw)
            if value < 0:
                raise ValueError
            return value
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return str(raw)
    except ValueError:
        raise UserError(f"{where}: '{raw}' is not a valid value for {name}") from None


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "smtp" and isinstance(value, dict):
            for sub, v in value.items():
                name = sub if sub in ("connections", "rate", "messages_per_connection") else f"smtp_{sub}"
                flat[name] = _convert(name, v, f"{path} [smtp] {sub}")
        elif key == "relays":
            flat["relays"] = _relays_from_toml(value, path)
        else:
            flat[key] = _convert(key, value, f"{path} {key}")
    return flat


def _relays_from_toml(value: Any, path: Path) -> tuple[RelaySpec, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: relays must be a list of [[relays]] tables")
    known = {f.name for f in fields(RelaySpec)} | {"password_file"}
    specs = []
    for number, table in enumerate(value, 1):
        where = f"{path} [[relays]] #{number}"
        if not isinstance(table, dict) or not table.get("host"):
            raise UserError(f"{where}: a relay needs a host")
        unknown = sorted(set(table) - known)
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}'")
        data = dict(table)
        if "password_file" in data:
            data["password"] = _password_from_file(str(data.pop("password_file")))
        try:
            spec = RelaySpec(**data)
            spec = replace(spec, port=int(spec.port), connections=int(spec.connections), rate=float(spec.rate))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: {exc}") from None
        if spec.tls not in TLS_MODES:
            raise UserError(f"{where}: tls '{spec.tls}' must be one of {', '.join(TLS_MODES)}")
        if spec.connections < 1 or spec.rate < 0 or not 1 <= spec.port <= 65535:
            raise UserError(f"{where}: connections must be at least 1, rate at least 0, port a TCP port")
        specs.append(spec)
    return tuple(specs)


def _password_from_file(path_text: str) -> str:
    path = Path(path_text)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UserError(f"MAILTOWER_SMTP_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"MAILTOWER_SMTP_PASSWORD_FILE: {path} is readable by group or others; chmod 600 it first"
        )
    return path.read_text(encoding="utf-8").strip()


def load_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, config_path: Path | None = None
) -> Settings:
    environ = os.environ if environ is None else environ
    path = config_path or Path(environ.get("MAILTOWER_CONFIG", "") or default_config_path())
    values: dict[str, Any] = _from_toml(path)
    for var, name in ENV.items():
        if environ.get(var, "") != "":
            values[name] = _convert(name, environ[var], var)
    if environ.get("MAILTOWER_SMTP_PASSWORD_FILE"):
        values["smtp_password"] = _password_from_file(environ["MAILTOWER_SMTP_PASSWORD_FILE"])
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    settings = Settings(config_path=path).with_overrides(values)
    check_settings(settings)
    return settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    if settings.smtp_tls not in TLS_MODES:
        raise UserError(f"MAILTOWER_SMTP_TLS: '{settings.smtp_tls}' must be one of {', '.join(TLS_MODES)}")
    if not 1 <= settings.smtp_port <= 65535:
        raise UserError(f"MAILTOWER_SMTP_PORT: {settings.smtp_port} is not a TCP port")
    if settings.connections < 1:
        raise UserError("MAILTOWER_SMTP_CONNECTIONS: at least one connection is needed")


def _endpoints(settings: Settings) -> list[tuple[str, str, bool, bool]]:
    """(host, tls, has credentials, verify) of every relay the sender will use."""
    if settings.relays:
        return [(r.host, r.tls, bool(r.user or r.password), r.verify) for r in settings.relays]
    return [(settings.smtp_host, settings.smtp_tls, bool(settings.smtp_user or settings.smtp_password), settings.smtp_verify)]


def check_smtp_security(settings: Settings) -> None:
    """Refuse to send in ways that leak a password or mail; called before any connection."""
    for host, tls, has_credentials, _ in _endpoints(settings):
        if tls == "none" and has_credentials:
            raise UserError(
                f"refusing to send an SMTP password to {host} over an unencrypted connection: use starttls or tls"
            )
        if tls == "none" and not is_loopback(host) and not settings.smtp_allow_plain:
            raise UserError(
                f"MAILTOWER_SMTP_TLS is none but {host} is not a loopback address: use starttls or tls, "
                "or set MAILTOWER_SMTP_ALLOW_PLAIN=1 to send unencrypted anyway"
            )


def security_warnings(settings: Settings) -> list[str]:
    """What an operator must be told about a weakened setup (shown in the dashboard and by `run`)."""
    warnings = []
    for host, tls, _, verify in _endpoints(settings):
        if tls == "none" and not is_loopback(host):
            warnings.append(f"mail to {host} goes unencrypted (MAILTOWER_SMTP_ALLOW_PLAIN)")
        if tls != "none" and not verify:
            warnings.append(f"the TLS certificate of {host} is not verified (MAILTOWER_SMTP_VERIFY=0)")
    return warnings
