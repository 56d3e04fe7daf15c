"""A private, real Postfix relay for tests: STARTTLS required before AUTH, SASL through
sasldb, delivery into a Maildir, and an optional anvil rate limit.

`postfix_relay(tmp_path, message_rate_limit=..., ...)` (a context manager around
`PostfixRelay.start`; the `relay` fixture of tests/core/test_postfix.py enters it) sets up one
instance of its own and stops it again, even when the test fails:

- Everything lives in a fresh directory made with `mkdtemp` under the system temp directory
  (or /tmp when that one is private; not pytest's `tmp_path`, which sits below a 0700
  directory of the test user that the unprivileged Postfix daemons could not traverse to
  reach the sasldb file or the Maildir): `conf/` (main.cf, master.cf, the TLS key and
  certificate, and `sasl/` with smtpd.conf for Cyrus SASL and the sasldb2), `queue/`
  (queue_directory, root-owned as postfix-files wants it), `data/` (data_directory), `mail/`
  (virtual_mailbox_base, the catch-all Maildir) and `maillog` (maillog_file, written by the
  postlogd service, so nothing depends on syslog). The directory is removed on exit; the
  mail log is copied into the test's `tmp_path` first so a failure can be read afterwards.
- The instance is started with `postfix -c CONF start` on a free port (another port if that
  one was taken meanwhile; the greeting must name our host) and stopped with `postfix -c CONF
  stop` (then `abort`, then SIGKILL of the master's process group, each bounded). Only set-gid
  commands (postdrop, postqueue) need a non-default configuration directory listed in
  `alternate_config_directories` of /etc/postfix/main.cf; this relay takes mail over SMTP
  only, so /etc/postfix/main.cf is neither needed nor touched (Debian's "No configuration"
  install has none). The package's own meta files (/etc/postfix/postfix-files,
  dynamicmaps.cf) are read by `postfix check` as usual.
- master.cf has only the services this needs, none chrooted (so the daemons see the paths
  above): the submission smtpd on 127.0.0.1 at a free port, cleanup, qmgr, trivial-rewrite,
  bounce/defer/trace, proxymap, tlsmgr, virtual, anvil and postlogd. No system service and
  no port 25 is involved; the system Postfix (if any) is neither started nor stopped.
- smtpd: `smtpd_tls_security_level = encrypt` and `smtpd_tls_auth_only = yes` (no AUTH
  before STARTTLS), a certificate for 127.0.0.1 issued by a private `trustme` CA (its PEM is
  `ca_file`, for MAILTOWER_SMTP_CA_FILE), Cyrus SASL with `pwcheck_method: auxprop`,
  `auxprop_plugin: sasldb`, `mech_list: PLAIN LOGIN` and a sasldb2 made with
  `saslpasswd2 -f FILE -p -c -u DOMAIN USER`; only authenticated clients may send
  (`smtpd_recipient_restrictions = permit_sasl_authenticated, reject`).
- Delivery: virtual(8) takes every address of `domain` (default example.com, the tests'
  recipient domain) into one catch-all Maildir, as the postfix user; virtual adds a
  `Delivered-To:` header naming the recipient.
- `message_rate_limit=N` with `rate_time_unit=S` sets anvil's
  `smtpd_client_message_rate_limit` and `anvil_rate_time_unit`, and empties
  `smtpd_client_event_limit_exceptions` (its default, $mynetworks, would exempt 127.0.0.1).
  Postfix then answers MAIL FROM with `450 4.7.1 Error: too much mail from 127.0.0.1`.
- `smtpd_client_port_logging = yes` puts the client's port into every connect/disconnect
  line, which `mark()` uses to know when the log has caught up.

Needs root (postfix(1) is reserved for the superuser) and Debian's `postfix`, `sasl2-bin`
and `libsasl2-modules` (.ci/run installs them). `missing_reason()` says why a test cannot
run here, or None.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

import trustme

from mailtower.core.sink import free_port

POSTFIX_PATHS = ("/usr/sbin/postfix",)
SASLPASSWD2_PATHS = ("/usr/sbin/saslpasswd2",)
COMMAND_TIMEOUT = 30.0  # seconds for one postfix/saslpasswd2 command
START_TIMEOUT = 20.0  # seconds until the smtpd answers after `postfix start`
START_ATTEMPTS = 3  # ports tried before giving up
MY_HOSTNAME = "relay.mailtower.test"  # the greeting tells our smtpd from anything else on a port

# A session's summary in the log, e.g.
# "disconnect from localhost[127.0.0.1]:40312 ehlo=2 starttls=1 auth=0/1 quit=1 commands=4/5"
_SESSION = re.compile(r"postfix/smtpd\[(\d+)\]: (connect|disconnect) from [^\[]*\[([^\]]+)\]:(\d+)(.*)$")
_CLIENT_PORT = re.compile(r"\]:(\d+)\b")
_COUNTER = re.compile(r"\b([a-z]+)=(\d+)(?:/(\d+))?")


def _tool(name: str, fallbacks: tuple[str, ...]) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in fallbacks if os.access(p, os.X_OK)), None)


def missing_reason() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if _tool("postfix", POSTFIX_PATHS) is None:
        return "Postfix is not installed (Debian: apt-get install postfix sasl2-bin libsasl2-modules)"
    return None


@dataclass(frozen=True, slots=True)
class Session:
    """One SMTP session as Postfix logged it (connect and, once over, disconnect)."""

    pid: int
    client_port: int
    closed: bool
    counters: dict[str, tuple[int, int]]  # command -> (accepted, attempted), from the disconnect line

    def attempts(self, command: str) -> int:
        return self.counters.get(command, (0, 0))[1]


@dataclass(frozen=True, slots=True)
class Delivered:
    recipient: str
    message_id: str


@dataclass
class PostfixRelay:
    """A running private Postfix; see the module docstring."""

    root: Path
    port: int
    user: str
    password: str = field(repr=False)
    domain: str
    ca_file: Path
    _master_pid: int | None = field(default=None, repr=False)
    _own_ports: set[int] = field(default_factory=set, repr=False)  # our probe and marker sessions

    # ---- layout --------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "catchall"

    def env(self, **extra: str) -> dict[str, str]:
        """MAILTOWER_* settings for a sender that logs in to this relay (verifying its certificate)."""
        return {
            "MAILTOWER_SMTP_HOST": "127.0.0.1",
            "MAILTOWER_SMTP_PORT": str(self.port),
            "MAILTOWER_SMTP_TLS": "starttls",
            "MAILTOWER_SMTP_USER": self.user,
            "MAILTOWER_SMTP_PASSWORD": self.password,
            "MAILTOWER_SMTP_CA_FILE": str(self.ca_file),
            **extra,
        }

    # ---- what arrived --------------------------------------------------------------------

    def delivered(self) -> list[Delivered]:
        """Every message in the Maildir (new/ and cur/), with its recipient and Message-ID."""
        parser = BytesHeaderParser()
        found = []
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                with path.open("rb") as f:
                    headers = parser.parse(f)
                found.append(Delivered(str(headers.get("Delivered-To", "")).lower(), str(headers.get("Message-ID", ""))))
        return found

    # ---- the mail log --------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        """The mail log without the lines of our own probe and marker sessions."""
        try:
            lines = self.maillog.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if not self._own_ports.intersection(map(int, _CLIENT_PORT.findall(line)))]

    def sessions(self, lines: list[str] | None = None) -> list[Session]:
        """smtpd sessions in the order they connected (one per connect line)."""
        open_: dict[tuple[int, int], int] = {}
        found: list[Session] = []
        for line in self.log_lines() if lines is None else lines:
            match = _SESSION.search(line)
            if not match:
                continue
            pid, kind, _, port, rest = int(match[1]), match[2], match[3], int(match[4]), match[5]
            key = (pid, port)
            if kind == "connect":
                open_[key] = len(found)
                found.append(Session(pid, port, False, {}))
            elif key in open_:
                counters = {m[1]: (int(m[2]), int(m[3] or m[2])) for m in _COUNTER.finditer(rest)}
                found[open_.pop(key)] = Session(pid, port, True, counters)
        return found

    def count(self, needle: str, lines: list[str] | None = None) -> int:
        return sum(needle in line for line in (self.log_lines() if lines is None else lines))

    def rate_limited(self, lines: list[str] | None = None) -> int:
        """How many MAIL FROM commands anvil refused ("450 4.7.1 Error: too much mail from ...")."""
        return self.count("Message delivery request rate limit exceeded", lines)

    def accepted(self, lines: list[str] | None = None) -> int:
        """How many messages Postfix took (cleanup logs each one before smtpd's 250)."""
        return sum(1 for line in (self.log_lines() if lines is None else lines)
                   if "postfix/cleanup[" in line and ": message-id=" in line)

    def auth_failures(self, lines: list[str] | None = None) -> int:
        return self.count("authentication failed", lines)

    def client_ports_now(self) -> set[int]:
        """Client ports of every TCP socket between 127.0.0.1 and this relay the kernel knows of
        right now (open, closing or in TIME_WAIT, from either side): a race-free picture of
        "the connections so far" to compare the log with later (Linux /proc/net/tcp)."""
        ports: set[int] = set()
        # 127.0.0.1 as /proc/net/tcp writes it, and as an IPv4-mapped address in tcp6.
        relay = {f"0100007F:{self.port:04X}", f"0000000000000000FFFF00000100007F:{self.port:04X}"}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except FileNotFoundError:
                continue
            for row in rows:
                local, remote = row.split()[1:3]
                if remote in relay:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
                elif local in relay and not remote.endswith(":0000"):
                    ports.add(int(remote.rsplit(":", 1)[1], 16))
        return ports

    def mark(self, timeout: float = 10.0) -> list[str]:
        """The log up to now: opens a session of our own and returns the log lines up to its
        disconnect, so every session that connected before it has been logged (postlogd
        writes asynchronously, so a plain read may lag behind)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            own_port = s.getsockname()[1]
            self._own_ports.add(own_port)
            s.settimeout(timeout)
            s.recv(4096)  # the greeting: smtpd has accepted (and logged) the connection
            s.sendall(b"QUIT\r\n")
            s.recv(4096)
        marker = re.compile(rf"postfix/smtpd\[\d+\]: disconnect from [^\[]*\[[^\]]+\]:{own_port}\b")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = self.maillog.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                text = ""
            found = marker.search(text)
            if found:
                upto = text[: found.end()].splitlines()
                return [ln for ln in upto if not self._own_ports.intersection(map(int, _CLIENT_PORT.findall(ln)))]
            time.sleep(0.05)
        raise AssertionError(f"Postfix did not log our marker session within {timeout}s")

    # ---- life cycle ----------------------------------------------------------------------

    @classmethod
    @contextmanager
    def start(
        cls,
        keep_log: Path | None = None,
        *,
        user: str = "mailer",
        password: str = "s3cret-Pa55word",
        domain: str = "example.com",
        message_rate_limit: int | None = None,
        rate_time_unit: int = 60,
        connection_rate_limit: int | None = None,
        extra_main: dict[str, str] | None = None,
        parent: Path | None = None,
    ) -> Iterator["PostfixRelay"]:
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance must be started as root (postfix(1) is for the superuser)")
        # `parent`: where the instance's directory goes (queue and Maildir with it); by default
        # the temp directory. A benchmark may put it on a tmpfs, for a relay whose disk is not the limit.
        root = Path(tempfile.mkdtemp(prefix="mailtower-postfix-", dir=_traversable_temp_dir(parent)))
        relay: PostfixRelay | None = None
        try:
            os.chmod(root, 0o755)  # the unprivileged daemons must traverse it
            relay = cls(root, free_port(), user, password, domain, root / "conf" / "ca.pem")
            relay._configure(message_rate_limit, rate_time_unit, connection_rate_limit, extra_main or {})
            relay._start()
            yield relay
        finally:
            try:
                if relay is not None:
                    relay._stop()
            finally:
                if keep_log is not None and (root / "maillog").exists():
                    shutil.copyfile(root / "maillog", keep_log)
                shutil.rmtree(root, ignore_errors=True)

    def _configure(
        self, message_rate_limit: int | None, rate_time_unit: int, connection_rate_limit: int | None, extra: dict[str, str]
    ) -> None:
        owner = pwd.getpwnam("postfix")
        for name in ("conf", "queue", "data", "mail"):
            (self.root / name).mkdir(mode=0o755)
        for name in ("data", "mail"):
            os.chown(self.root / name, owner.pw_uid, owner.pw_gid)
        self._write_tls()
        self._write_sasl(owner.pw_gid)
        main = self._main_cf(owner, message_rate_limit, rate_time_unit, connection_rate_limit) | extra
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.conf / "master.cf").write_text(self._master_cf())

    def _write_tls(self) -> None:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        key = self.conf / "key.pem"
        key.touch(mode=0o600)
        leaf.private_key_pem.write_to_path(str(key))
        with (self.conf / "cert.pem").open("wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())

    def set_password(self, password: str) -> None:
        """Change the password Postfix accepts for `user` (smtpd reads the sasldb at every login)."""
        self._saslpasswd2(self.conf / "sasl" / "sasldb2", password)
        self.password = password

    def _saslpasswd2(self, sasldb: Path, password: str) -> None:
        tool = _tool("saslpasswd2", SASLPASSWD2_PATHS)
        if tool is None:
            raise RuntimeError("saslpasswd2 is missing (Debian: apt-get install sasl2-bin libsasl2-modules)")
        subprocess.run(
            [tool, "-f", str(sasldb), "-p", "-c", "-u", self.domain, self.user],
            input=password.encode(), check=True, timeout=COMMAND_TIMEOUT, capture_output=True,
        )

    def _write_sasl(self, postfix_gid: int) -> None:
        # Debian's Postfix looks for smtpd.conf in cyrus_sasl_config_path, and in
        # $config_directory/sasl when that is not set: conf/sasl is right either way.
        sasl_dir = self.conf / "sasl"
        sasl_dir.mkdir(mode=0o755)
        sasldb = sasl_dir / "sasldb2"
        (sasl_dir / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {sasldb}\n"
        )
        self._saslpasswd2(sasldb, self.password)
        # smtpd reads it on every login, after dropping root.
        os.chown(sasldb, 0, postfix_gid)
        os.chmod(sasldb, 0o640)

    def _main_cf(
        self, owner: pwd.struct_passwd, message_rate_limit: int | None, rate_time_unit: int, connection_rate_limit: int | None
    ) -> dict[str, str]:
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "myhostname": MY_HOSTNAME,
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "local_recipient_maps": "",
            "relay_domains": "",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "smtpd_client_port_logging": "yes",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_cert_file": str(self.conf / "cert.pem"),
            "smtpd_tls_key_file": str(self.conf / "key.pem"),
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(self.conf / "sasl"),
            "smtpd_sasl_local_domain": self.domain,
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.root / "mail"),
            "virtual_mailbox_maps": f"inline:{{ @{self.domain}=catchall/ }}",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "virtual_minimum_uid": "1",
            # No DNS and no bounces to the outside world from a test.
            "smtp_dns_support_level": "disabled",
            "default_transport": "error:no outside mail from a test relay",
            "notify_classes": "",
        }
        if message_rate_limit is not None or connection_rate_limit is not None:
            main["smtpd_client_event_limit_exceptions"] = ""  # its default ($mynetworks) exempts 127.0.0.1
            main["anvil_rate_time_unit"] = f"{rate_time_unit}s"
        if message_rate_limit is not None:
            main["smtpd_client_message_rate_limit"] = str(message_rate_limit)
        if connection_rate_limit is not None:
            main["smtpd_client_connection_rate_limit"] = str(connection_rate_limit)
        return main

    def _master_cf(self) -> str:
        services = [
            f"127.0.0.1:{self.port} inet n - n - - smtpd",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "proxymap unix - - n - - proxymap",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "virtual unix - n n - - virtual",
            "anvil unix - - n - 1 anvil",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        return "\n".join(services) + "\n"

    def _postfix(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        tool = _tool("postfix", POSTFIX_PATHS)
        assert tool is not None
        done = subprocess.run(
            [tool, "-c", str(self.conf), *command], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def _start(self) -> None:
        """Start it; if the master cannot have its port (another process took it between
        free_port() and the bind), try again on another one."""
        self._postfix("check")
        why = ""
        for _ in range(START_ATTEMPTS):
            self._master_pid = None
            # `postfix start` waits for the master's initialisation (master -w): a port that
            # cannot be bound makes it fail here, with the reason only in the mail log.
            done = self._postfix("start", check=False)
            if done.returncode == 0 and self._wait_until_answering():
                return
            why = f"postfix start: exit {done.returncode} {done.stderr.strip()} on port {self.port}"
            self._stop()
            self.port = free_port()
            (self.conf / "master.cf").write_text(self._master_cf())
        raise RuntimeError(f"the private Postfix did not start in {START_ATTEMPTS} attempts ({why}): "
                           + " | ".join(self.log_lines()[-5:]))

    def _wait_until_answering(self) -> bool:
        pid_file = self.root / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._master_pid is None and pid_file.exists():
                text = pid_file.read_text().strip()
                self._master_pid = int(text) if text.isdigit() else None
            if self._answers():
                return True
            if self._master_pid is not None and self._master_gone(timeout=0):
                return False  # e.g. "bind 127.0.0.1 port N: Address already in use"
            time.sleep(0.1)
        return False

    def _answers(self) -> bool:
        """Our smtpd greets on the port (not some other server that happens to hold it)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                self._own_ports.add(s.getsockname()[1])
                s.settimeout(5)
                greeting = s.recv(4096)
                s.sendall(b"QUIT\r\n")
                return greeting.startswith(b"220 " + MY_HOSTNAME.encode())
        except OSError:
            return False

    def _stop(self) -> None:
        """Orderly stop, then abort, then SIGKILL of the master: each step bounded."""
        pid_file = self.root / "queue" / "pid" / "master.pid"
        if self._master_pid is None and pid_file.exists():
            text = pid_file.read_text().strip()
            self._master_pid = int(text) if text.isdigit() else None
        for command in ("stop", "abort"):
            try:
                self._postfix(command, check=False)
            except subprocess.TimeoutExpired:
                continue
            if self._master_gone(timeout=10.0):
                return
        if self._master_pid is not None:
            try:
                os.killpg(self._master_pid, signal.SIGKILL)  # the master leads its daemons' group
            except ProcessLookupError:
                pass

    def _master_gone(self, timeout: float) -> bool:
        if self._master_pid is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.kill(self._master_pid, 0)
            except ProcessLookupError:
                return True
            if _is_zombie(self._master_pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _traversable_temp_dir(wanted: Path | None = None) -> str:
    """`wanted` if given and the postfix user can reach into it (else an error); otherwise the
    temp directory, unless the postfix user could not reach into it (a private TMPDIR): then
    /tmp or /var/tmp."""
    if wanted is not None:
        path = Path(wanted).resolve()
        if not (path.is_dir() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents))):
            raise RuntimeError(f"{wanted}: not a directory the postfix user can traverse")
        return str(path)
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate).resolve()
        if path.is_dir() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    raise RuntimeError("no temp directory the postfix user can traverse (tried $TMPDIR, /tmp, /var/tmp)")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


@contextmanager
def postfix_relay(tmp_path: Path, **options: object) -> Iterator[PostfixRelay]:
    """A private Postfix for one test (see PostfixRelay.start for the options); its mail log
    is kept as tmp_path/maillog.txt for reading after a failure."""
    keep = tmp_path / "maillog.txt"
    with PostfixRelay.start(keep, **options) as relay:  # type: ignore[arg-type]
        yield relay
