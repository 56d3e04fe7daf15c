"""Sending speed through a real Postfix submission relay: mailtower next to a threaded smtplib script.

    .venv/bin/python tests/bench/bench_relay.py [--n 8000] [--rounds 3] [--connections 1,4,16]
        [--messages-per-connection N] [--delay-ms MS] [--relay-dir DIR] [--profile OUT.svg|OUT.txt]

Sets up a private Postfix (tests/postfix_relay.py: its own config directory and queue, a private
CA, STARTTLS before AUTH, SASL through sasldb, virtual(8) delivery into one catch-all Maildir),
tuned for a benchmark (no anvil limits, enough smtpd processes for every connection), then for
each connection count K and round runs, alternating, in subprocesses so both pay interpreter
startup alike:

- mailtower: a fresh database with N personalised text+HTML recipients (`mailtower new ... --now`),
  timed `mailtower run --until-idle` with MAILTOWER_SMTP_* pointing at the relay and K connections;
- the baseline: K threads, each one smtplib connection (STARTTLS with the private CA, login, one
  sendmail per message, no pipelining, no ledger), sending N messages of the size mailtower's
  messages have.

Between runs it waits (bounded) until Postfix has delivered everything (the Maildir holds the
expected count and the queue is empty), then checks the Maildir: for mailtower each recipient
exactly once with distinct Message-IDs, for the baseline the count, and empties it. Prints per
round mailtower's rate (N / process wall time, and the rate while sending: first to last outcome
in the ledger), the baseline's rate, their ratio and the load average; then medians per K. The
targets are judged on these. Each round also gives both rates until delivered: from the sender's
start to Postfix's last delivery into the Maildir (the newest file's time). Postfix shares the
two cores with the sender, and what it has not delivered when a sender exits it delivers after,
outside that sender's time; the rate until delivered counts that work for both.
mailtower keeps its default messages_per_connection (1000: it reconnects, the baseline never
does) unless --messages-per-connection says otherwise. Each rate comes with the CPU time of the
sending process per message and the load average, because on a small shared machine the
client's CPU is taken from Postfix; with them goes the whole host's busy CPU time per message
during the run (/proc/stat, both cores: the sender, Postfix and the kernel; "relay" is that less
the sender's), which shows how much of the two cores Postfix itself needs per message.
--relay-dir puts Postfix's directory (queue, Maildir) there instead of the temp directory: on this
host the temp directory is on a disk whose fsync caps Postfix near 320 msg/s for any client, and
/dev/shm (a tmpfs) gives a relay limited by CPU instead; the senders' databases stay in the temp
directory either way. --delay-ms puts a proxy (its own process) between the senders
and Postfix that delays each direction, for a relay across a network. --profile runs mailtower once more under py-spy.
Exit status 1 when a Maildir check fails. Needs root and Debian's postfix, sasl2-bin,
libsasl2-modules. Only 127.0.0.1 is used; Postfix is stopped and everything removed at the end.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.compiled import MAILTOWER, precompile  # noqa: E402
from tests.bench.host_cpu import host_busy  # noqa: E402
from tests.postfix_relay import PostfixRelay  # noqa: E402

PY = sys.executable
RUN_TIMEOUT = 600.0  # seconds for one sending process
DRAIN_TIMEOUT = 300.0  # seconds for Postfix to deliver one run's mail into the Maildir
TARGETS = {4: 1.2}  # ratio mailtower / baseline wanted per K; every other K: 1.0

# Benchmark tuning of the relay: anvil must not count or limit our connections, and there must
# be an smtpd process for every connection at once (default_process_limit caps smtpd's maxproc "-").
BENCH_MAIN = {
    "default_process_limit": "200",
    "smtpd_client_connection_count_limit": "0",
    "smtpd_client_connection_rate_limit": "0",
    "smtpd_client_message_rate_limit": "0",
    "smtpd_client_recipient_rate_limit": "0",
    "smtpd_client_new_tls_session_rate_limit": "0",
    "smtpd_client_auth_rate_limit": "0",
    "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
    "virtual_destination_concurrency_limit": "20",
    "virtual_destination_recipient_limit": "1",
    "in_flow_delay": "0s",  # no inbound flow control: we measure the client side
}

# The baseline, run as its own process: K threads, one connection each, one sendmail per message.
BASELINE = r'''
import smtplib, ssl, sys, threading, time
host, port, user, password, ca, n, k, template_path = sys.argv[1:9]
port, n, k = int(port), int(n), int(k)
template = open(template_path, "rb").read()
context = ssl.create_default_context(cafile=ca)
errors = []

def worker(index):
    try:
        with smtplib.SMTP(host, port, timeout=60) as s:
            s.starttls(context=context)
            s.login(user, password)
            for i in range(index, n, k):
                rcpt = f"person{i}@example.com"
                msg = template.replace(b"@@RCPT@@", rcpt.encode()).replace(b"@@ID@@", f"{i:08d}".encode())
                s.sendmail("news@example.org", [rcpt], msg)
    except Exception as exc:
        errors.append(f"thread {index}: {exc!r}")

threads = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit("baseline failed: " + "; ".join(errors[:3]))
'''


# A TCP relay on 127.0.0.1 that delays every chunk by a fixed time each way, run as its own
# process: a relay across a network instead of on the same host. Order is kept because every
# chunk of a direction waits the same delay (call_later on a monotonic clock).
DELAY_PROXY = r'''
import asyncio, sys
listen_port_file, upstream_port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

async def pump(reader, writer, loop):
    try:
        while data := await reader.read(65536):
            loop.call_later(delay, writer.write, data)
    finally:
        loop.call_later(delay, writer.close)

async def serve(reader, writer):
    loop = asyncio.get_running_loop()
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    await asyncio.gather(pump(reader, up_writer, loop), pump(up_reader, writer, loop), return_exceptions=True)

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    with open(listen_port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


@contextmanager
def delayed(tmp: Path, relay: PostfixRelay, delay_ms: float) -> Iterator[int]:
    """The port to send to: the relay's own, or a delaying proxy's in front of it (stopped after)."""
    if not delay_ms:
        yield relay.port
        return
    script, port_file = tmp / "delay_proxy.py", tmp / "delay_proxy.port"
    script.write_text(DELAY_PROXY)
    port_file.unlink(missing_ok=True)
    proxy = subprocess.Popen([PY, str(script), str(port_file), str(relay.port), str(delay_ms / 1000)])
    try:
        deadline = time.monotonic() + 10
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit("the delaying proxy did not start")
            time.sleep(0.05)
        yield int(port_file.read_text())
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=10)


def body_files(tmp: Path) -> tuple[Path, Path]:
    para = "Our spring collection is here, {{ name }}. Use code {{ code }} at checkout for ten percent off. "
    text, html = tmp / "body.txt", tmp / "body.html"
    text.write_text("Hello {{ name }},\n\n" + (para + "\n") * 7, encoding="utf-8")
    html.write_text("<html><body><p>Hello {{ name }},</p>" + ("<p>" + para + "</p>") * 7 + "</body></html>",
                    encoding="utf-8")
    return text, html


def people_csv(tmp: Path, n: int) -> Path:
    people = tmp / f"people-{n}.csv"
    if not people.exists():
        with people.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["email", "name", "code"])
            for i in range(n):
                w.writerow([f"person{i}@example.com", f"Person {i}", f"SPRING{i:06d}"])
    return people


def mailtower_message(tmp: Path) -> bytes:
    """One message exactly as mailtower renders it for a recipient (headers included)."""
    from mailtower.core.compose import MessageTemplate

    text, html = body_files(tmp)
    t = MessageTemplate.build(mailing_id=1, subject="Spring for {{ name }}", from_addr="news@example.org",
                              text=text.read_text(), html=html.read_text(), available_fields={"code"})
    return bytes(t.render(recipient_id=1, email="person1@example.com", name="Person 1", fields={"code": "SPRING000001"}))


def baseline_template(tmp: Path, size: int) -> Path:
    """A text+HTML message padded to `size` bytes once its placeholders are filled in."""
    from email.message import EmailMessage

    def build(pad: int) -> bytes:
        m = EmailMessage()
        m["From"] = "news@example.org"
        m["To"] = "@@RCPT@@"
        m["Subject"] = "Spring for you"
        m["Message-ID"] = "<baseline-@@ID@@@bench.mailtower.test>"
        words = ("spring " * (pad // 7 + 1))[:pad]
        body = "Hello,\n\n" + "\n".join(words[i:i + 70] for i in range(0, len(words), 70)) + "\n"
        m.set_content(body)
        m.add_alternative(f"<html><body><p>{body}</p></body></html>", subtype="html")
        return m.as_bytes().replace(b"\n", b"\r\n")

    def filled(pad: int) -> int:  # the size once "@@RCPT@@" and "@@ID@@" are filled in
        return len(build(pad)) - len(b"@@RCPT@@") + len("person1@example.com") - len(b"@@ID@@") + 8

    pad = min(range(0, size, 4), key=lambda p: abs(filled(p) - size))
    path = tmp / "baseline.eml"
    path.write_bytes(build(pad))
    return path


@dataclass(frozen=True)
class Result:
    wall: float  # N / process wall time
    sending: float | None  # (N - 1) / (first to last outcome in the ledger), mailtower only
    load: str
    cpu_ms: float  # the sending process's CPU time (user + system) per message, milliseconds
    sys_ms: float  # the system part of it (socket writes and reads, TLS records, thread wake-ups)
    host_ms: float  # the whole host's busy CPU time per message while the sender ran (host_busy)
    started: float  # wall-clock time (epoch seconds) the sending process was started

    def cpu(self) -> str:
        return (f"CPU {self.cpu_ms:.2f} ms/msg, sys {self.sys_ms:.2f}; host {self.host_ms:.2f} ms/msg, "
                f"relay {self.host_ms - self.cpu_ms:.2f}")


def timed_child(command: list[str], env: dict[str, str] | None, n: int) -> tuple[float, float, float, float, float]:
    """Run `command`; (wall seconds, its CPU, its system CPU and the host's busy CPU milliseconds
    per message, the wall-clock time it started). The child's CPU time comes from
    RUSAGE_CHILDREN, which grows by exactly this child once it has been waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = host_busy()
    started = time.time()
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, timeout=RUN_TIMEOUT)
    elapsed = time.perf_counter() - start
    busy = host_busy() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    system = after.ru_stime - before.ru_stime
    cpu = (after.ru_utime - before.ru_utime) + system
    return elapsed, cpu * 1000 / n, system * 1000 / n, busy * 1000 / n, started


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mailtower_run(tmp: Path, relay: PostfixRelay, n: int, k: int, tag: str, mpc: int | None,
                  command: list[str] | None = None, port: int | None = None) -> Result:
    """`command` (default `mailtower run --until-idle`, through its entry point) sends; it is timed."""
    db = tmp / f"{tag}.db"
    text, html = body_files(tmp)
    env = {**os.environ, **relay.env(), "MAILTOWER_DB": str(db), "MAILTOWER_CONFIG": os.devnull,
           "MAILTOWER_SMTP_CONNECTIONS": str(k), "MAILTOWER_SMTP_PORT": str(port or relay.port)}
    if mpc is not None:
        env["MAILTOWER_MESSAGES_PER_CONNECTION"] = str(mpc)
    subprocess.run(
        [PY, "-m", "mailtower.tui.cli", "new", "--name", tag, "--subject", "Spring for {{ name }}",
         "--from", "news@example.org", "--text", str(text), "--html", str(html),
         "--recipients", str(people_csv(tmp, n)), "--now"],
        env=env, check=True, stdout=subprocess.DEVNULL, timeout=RUN_TIMEOUT,
    )
    elapsed, cpu_ms, sys_ms, host_ms, started = timed_child(command or [*MAILTOWER, "run", "--until-idle"], env, n)
    load = load_average()
    with sqlite3.connect(db) as conn:
        sent, first, last = conn.execute(
            "SELECT COUNT(*), MIN(updated_at), MAX(updated_at) FROM recipients WHERE state = 'sent'"
        ).fetchone()
    if sent != n:
        raise SystemExit(f"mailtower sent only {sent} of {n} (database {db})")
    sending = (n - 1) / (last - first) if last and first and last > first else None
    return Result(n / elapsed, sending, load, cpu_ms, sys_ms, host_ms, started)


def baseline_run(tmp: Path, relay: PostfixRelay, n: int, k: int, template: Path, port: int | None = None) -> Result:
    script = tmp / "baseline.py"
    script.write_text(BASELINE)
    elapsed, cpu_ms, sys_ms, host_ms, started = timed_child([PY, str(script), "127.0.0.1", str(port or relay.port), relay.user, relay.password,
                                   str(relay.ca_file), str(n), str(k), str(template)], None, n)
    return Result(n / elapsed, None, load_average(), cpu_ms, sys_ms, host_ms, started)


def maildir_files(relay: PostfixRelay) -> list[Path]:
    return [p for sub in ("new", "cur") if (relay.maildir / sub).is_dir() for p in (relay.maildir / sub).iterdir()]


def delivered_rate(relay: PostfixRelay, result: Result, n: int) -> float:
    """Messages per second from the sender's start until Postfix had delivered the last of them:
    the newest Maildir file's modification time, so neither the polling of `drain` nor the
    Maildir check counts. On a host the sender shares with Postfix, a sender that leaves mail in
    Postfix's queue when it exits has its rate counted before Postfix's delivery work is done;
    this one counts that work for everyone alike."""
    last = max(path.stat().st_mtime for path in maildir_files(relay))
    return n / (last - result.started)


def queue_empty(relay: PostfixRelay) -> bool:
    queue = relay.root / "queue"
    return not any(any(p.is_file() for p in (queue / name).rglob("*"))
                   for name in ("maildrop", "incoming", "active", "deferred", "hold") if (queue / name).is_dir())


def drain(relay: PostfixRelay, expected: int) -> float:
    """Wait until the Maildir holds `expected` messages and Postfix's queue is empty; seconds waited."""
    start = time.monotonic()
    deadline = start + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if len(maildir_files(relay)) >= expected and queue_empty(relay):
            return time.monotonic() - start
        time.sleep(0.2)
    raise SystemExit(f"Postfix delivered {len(maildir_files(relay))} of {expected} within {DRAIN_TIMEOUT:.0f}s; "
                     f"queue empty: {queue_empty(relay)}; last log: {relay.log_lines()[-3:]}")


def check_and_empty_maildir(relay: PostfixRelay, n: int, who: str) -> str | None:
    """None when each of person0..person{n-1} got exactly one message with its own Message-ID."""
    found = relay.delivered()
    for path in maildir_files(relay):
        path.unlink()
    per_rcpt = Counter(d.recipient for d in found)
    ids = {d.message_id for d in found}
    wanted = {f"person{i}@example.com" for i in range(n)}
    missing = wanted - per_rcpt.keys()
    twice = [r for r, c in per_rcpt.items() if c > 1]
    extra = per_rcpt.keys() - wanted
    if len(found) == n and not missing and not twice and not extra and len(ids) == n:
        return None
    return (f"{who}: Maildir has {len(found)} messages for {n} recipients: {len(missing)} missing, "
            f"{len(twice)} twice, {len(extra)} unexpected, {len(ids)} distinct Message-IDs")


def parse_connections(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(v < 1 or v > 64 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each must be 1..64")
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=parse_connections, default=[4], help="e.g. 1,4,16")
    ap.add_argument("--messages-per-connection", type=int, default=None,
                    help="MAILTOWER_MESSAGES_PER_CONNECTION for mailtower (default: mailtower's own default)")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="send through a proxy that delays each direction by this much (a relay across a network)")
    ap.add_argument("--relay-dir", type=Path, default=None,
                    help="make Postfix's directory (queue, Maildir) in DIR, e.g. /dev/shm (default: the temp directory)")
    ap.add_argument("--profile", metavar="OUT",
                    help="after the rounds, run mailtower once more under `py-spy record --gil` (py-spy in the venv), "
                         "at the first --connections; OUT.svg: flame graph, other names: collapsed stacks")
    args = ap.parse_args()
    if not (1 <= args.n <= 200_000) or not (1 <= args.rounds <= 20):
        ap.error("--n must be 1..200000 and --rounds 1..20")
    if args.messages_per_connection is not None and not (0 <= args.messages_per_connection <= 1_000_000):
        ap.error("--messages-per-connection must be 0..1000000 (0: never reconnect)")
    if not (0 <= args.delay_ms <= 1000):  # NaN fails this too
        ap.error("--delay-ms must be 0..1000")
    if args.relay_dir is not None and not args.relay_dir.is_dir():
        ap.error(f"--relay-dir {args.relay_dir}: not a directory")
    if args.profile and not Path(PY).with_name("py-spy").exists():
        ap.error(f"--profile needs py-spy next to {PY} (pip install py-spy into this venv)")
    precompile(RUN_TIMEOUT)
    tmp = Path(tempfile.mkdtemp(prefix="mailtower-bench-relay-"))
    failures: list[str] = []
    results: dict[int, list[tuple[Result, Result]]] = {k: [] for k in args.connections}
    delivered: dict[int, list[tuple[float, float]]] = {k: [] for k in args.connections}
    try:
        size = len(mailtower_message(tmp))
        template = baseline_template(tmp, size)
        base_size = len(template.read_bytes()) - len(b"@@RCPT@@") + len("person1@example.com") - len(b"@@ID@@") + 8
        print(f"N={args.n}, rounds={args.rounds}, connections={args.connections}, message size: mailtower "
              f"{size} bytes, baseline {base_size} bytes; cores {os.cpu_count()}, load {load_average()}", flush=True)
        with PostfixRelay.start(tmp / "maillog.txt", extra_main=BENCH_MAIN, parent=args.relay_dir) as relay, \
                delayed(tmp, relay, args.delay_ms) as port:
            print(f"private Postfix on 127.0.0.1:{relay.port} ({relay.root}); senders use port {port}"
                  + (f", a proxy delaying each direction by {args.delay_ms:g} ms" if args.delay_ms else ""), flush=True)
            for k in args.connections:
                for r in range(args.rounds):
                    before = len(failures)
                    ours = mailtower_run(tmp, relay, args.n, k, f"k{k}-r{r}", args.messages_per_connection, port=port)
                    waited = drain(relay, args.n)
                    ours_delivered = delivered_rate(relay, ours, args.n)
                    problem = check_and_empty_maildir(relay, args.n, f"mailtower K={k} round {r + 1}")
                    failures += [problem] if problem else []
                    theirs = baseline_run(tmp, relay, args.n, k, template, port)
                    waited += drain(relay, args.n)
                    theirs_delivered = delivered_rate(relay, theirs, args.n)
                    problem = check_and_empty_maildir(relay, args.n, f"baseline K={k} round {r + 1}")
                    failures += [problem] if problem else []
                    results[k].append((ours, theirs))
                    delivered[k].append((ours_delivered, theirs_delivered))
                    sending = f"{ours.sending:,.0f}" if ours.sending else "-"
                    print(f"K={k:<2} round {r + 1}: mailtower {ours.wall:,.0f} msg/s (while sending {sending}; "
                          f"{ours.cpu()}; load {ours.load})   baseline {theirs.wall:,.0f} msg/s "
                          f"({theirs.cpu()}; load {theirs.load})   "
                          f"ratio {ours.wall / theirs.wall:.2f}   [Postfix drained in {waited:.1f}s; Maildir "
                          f"{'ok' if len(failures) == before else 'PROBLEM'}]", flush=True)
                    print(f"      until delivered: mailtower {ours_delivered:,.0f} msg/s, baseline "
                          f"{theirs_delivered:,.0f} msg/s, ratio {ours_delivered / theirs_delivered:.2f}", flush=True)
            if args.profile:
                # A name ending in .svg gets a flame graph, any other collapsed stacks (text).
                form = "flamegraph" if args.profile.endswith(".svg") else "raw"
                wrap = [str(Path(PY).with_name("py-spy")), "record", "--gil", "-r", "200", "-f", form,
                        "-o", args.profile, "--", *MAILTOWER, "run", "--until-idle"]
                k = args.connections[0]
                ours = mailtower_run(tmp, relay, args.n, k, "profile", args.messages_per_connection, wrap, port)
                drain(relay, args.n)
                problem = check_and_empty_maildir(relay, args.n, "mailtower under py-spy")
                failures += [problem] if problem else []
                print(f"profiled run K={k}: {ours.wall:,.0f} msg/s under py-spy -> {args.profile}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, pairs in results.items():
        if not pairs:
            continue
        m_ours = statistics.median(o.wall for o, _ in pairs)
        m_send = statistics.median(o.sending or 0 for o, _ in pairs)
        m_theirs = statistics.median(t.wall for _, t in pairs)
        m_ratio = statistics.median(o.wall / t.wall for o, t in pairs)
        cpu = statistics.median(o.cpu_ms for o, _ in pairs), statistics.median(t.cpu_ms for _, t in pairs)
        host = statistics.median(o.host_ms for o, _ in pairs), statistics.median(t.host_ms for _, t in pairs)
        target = TARGETS.get(k, 1.0)
        print(f"median K={k}: mailtower {m_ours:,.0f} msg/s (while sending {m_send:,.0f}; CPU {cpu[0]:.2f} ms/msg, "
              f"host {host[0]:.2f}), baseline {m_theirs:,.0f} msg/s (CPU {cpu[1]:.2f} ms/msg, host {host[1]:.2f}), ratio of medians {m_ours / m_theirs:.2f}, "
              f"median ratio {m_ratio:.2f} (target >= {target}: {'met' if m_ratio >= target else 'NOT met'})",
              flush=True)
        pairs_delivered = delivered[k]
        print(f"    until delivered (sender start to Postfix's last delivery), K={k}: mailtower "
              f"{statistics.median(o for o, _ in pairs_delivered):,.0f} msg/s, baseline "
              f"{statistics.median(t for _, t in pairs_delivered):,.0f} msg/s, median ratio "
              f"{statistics.median(o / t for o, t in pairs_delivered):.2f}", flush=True)
    for problem in failures:
        print(problem, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
