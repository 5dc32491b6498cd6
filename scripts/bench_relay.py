#!/usr/bin/env python3
"""Benchmark: what the edge's websocket relay costs Prefect's event stream (`/api/events/in`).

Starts a stack (edge on, 1 API replica, no workers, no examples), creates a developer key,
then, in the same run and on loopback, streams events over ONE websocket the way Prefect's
`PrefectEventsClient` does (subprotocol `prefect`, first message `{"type": "auth", ...}`, one
text frame per `Event` JSON, a ping every --checkpoint-every events, permessage-deflate as
the `websockets` client negotiates by default) to four targets:
  - direct        ws://127.0.0.1:<api port>     the API process (its server auth string)
  - direct-plain  the same without permessage-deflate. The relay accepts the client's deflate
                  but talks to the API uncompressed, so through the relay the API no longer
                  inflates frames: this row separates that saving from the relay's own cost
  - relay         ws://127.0.0.1:<auth port>    the auth service's relay alone, no TLS/Caddy
  - edge          wss://localhost:<https port>  Caddy (TLS, verified against <state>/ca.crt)
                                                -> relay -> API; token `<label>:<key>`
Ratios are to `direct`, which is what Prefect's client does against an API without the edge.

What is timed. Prefect's client has no application-level ack: its "checkpoint" is a
websocket ping whose pong only proves that the *next hop* read the frames (through the edge
that hop is the relay, not the API). So two figures per run, both from the first event sent
(after the handshake, which is timed separately):
  - sent/s       client view: all N frames written and a final ping answered (Prefect's own
                 confirmation);
  - delivered/s  end to end: until the LAST event (events on one socket keep their order
                 through the API's publisher, Redis and the distributor) arrives on an
                 `/api/events/out` subscription held directly on the API, filtered to this
                 run's resource id and proven live with a probe event before the run. The
                 observer leg is the same for every target, so the difference between targets
                 is the relay (and TLS + Caddy). The client closes its socket after the final
                 ping, which flushes the API's publisher batch (Prefect batches by 5).
  - @pong        events not yet seen on events/out when the final pong came back: how far
                 what Prefect's client counts as confirmed runs ahead of delivery. Not a pure
                 relay figure (the API's publisher and distributor lag too, see direct-plain);
                 through the relay the pong is the relay's own, never the API's.
Events are built before the clock starts. Each target gets an untimed warm-up run, and the
order of targets rotates between repetitions. After the runs the persisted events are
counted with `POST /api/events/filter` (untimed, a check that none was lost).

Also: CPU seconds of the auth, edge (Caddy) and API processes (psutil, with children) per 1000
events, and the time to open a socket and complete Prefect's auth handshake (p50/p95 of
--opens sequential connections): direct, relay, edge with the in-band token only, and edge
the way Prefect's client really connects with PREFECT_API_AUTH_STRING set (a Basic
Authorization header on the upgrade as well as the in-band token).

Every loop is bounded (a count and a timeout) and the stack is stopped at the end.

    python scripts/bench_relay.py [--events 2000] [--reps 3] [--opens 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from prefect.events import Event
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
TARGETS = ("direct", "direct-plain", "relay", "edge")
OPEN_TIMEOUT = 15.0
STEP_TIMEOUT = 30.0  # one ping, one handshake reply, one probe
# The event persister (services process) may lag the runs: wait while it makes progress.
PERSIST_STALL = 30.0
PERSIST_TIMEOUT = 300.0
WARMUP_EVENTS = 200
# The processes whose CPU is charged to a run (names from `prefectstack status --json`).
CPU_OF = ("auth", "edge", "api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefectstack(*args: str, cwd: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=CLEAN_ENV,
        capture_output=True, text=True, timeout=900, check=True,
    ).stdout


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Target:
    name: str
    base: str  # ws://host:port or wss://host:port
    token: str | None
    ssl: ssl.SSLContext | None = None
    headers: tuple[tuple[str, str], ...] = ()
    compression: str | None = "deflate"  # what the `websockets` client (so Prefect's) offers


async def open_prefect(target: Target, path: str) -> ClientConnection:
    """Open `path` with Prefect's subprotocol and complete its in-band auth handshake."""
    ws = await connect(
        target.base + path, subprotocols=[Subprotocol("prefect")], ssl=target.ssl,
        additional_headers=list(target.headers) or None, open_timeout=OPEN_TIMEOUT,
        compression=target.compression, max_size=16 * 1024 * 1024,
    )
    try:
        await ws.send(json.dumps({"type": "auth", "token": target.token}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), STEP_TIMEOUT))
        if reply.get("type") != "auth_success":
            raise RuntimeError(f"{target.name}: auth refused: {reply}")
    except BaseException:
        await ws.close()
        raise
    return ws


def time_window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(minutes=5)).isoformat(),
            "until": (now + timedelta(hours=2)).isoformat()}


@dataclass
class Observer:
    """An `/api/events/out` subscription, direct on the API, for one resource id."""

    direct: Target
    rid: str
    ws: ClientConnection | None = None
    pings: int = 0
    probe_seen: asyncio.Event = field(default_factory=asyncio.Event)
    last_id: str | None = None
    last_seen: asyncio.Event = field(default_factory=asyncio.Event)
    last_at: float = 0.0
    task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        # The observer is the instrument, not the path measured: no compression.
        self.ws = await open_prefect(replace(self.direct, compression=None), "/api/events/out")
        await self.ws.send(json.dumps({
            "type": "filter", "backfill": False,
            "filter": {"resource": {"id": [self.rid]}, "occurred": time_window()},
        }))
        self.task = asyncio.create_task(self._read())
        # The subscription is registered some time after the filter message: prove it.
        for _ in range(5):
            await send_events(self.direct, [probe(self.rid)], checkpoint_every=0, seen=None)
            try:
                await asyncio.wait_for(self.probe_seen.wait(), 5.0)
                return self
            except TimeoutError:
                continue
        raise RuntimeError("the events/out subscription never delivered the probe event")

    async def __aexit__(self, *exc: object) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.ws:
            await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            message = json.loads(raw)
            if message.get("type") != "event":
                continue
            event = message["event"]
            if event["event"] == "bench.probe":
                self.probe_seen.set()
            elif event["event"] == "bench.ping":
                self.pings += 1
                if event["id"] == self.last_id:
                    self.last_at = time.perf_counter()
                    self.last_seen.set()


def probe(rid: str) -> str:
    return Event(event="bench.probe", resource={"prefect.resource.id": rid}).model_dump_json()


def build_events(rid: str, n: int) -> tuple[list[str], str]:
    events = [Event(event="bench.ping", resource={"prefect.resource.id": rid}) for _ in range(n)]
    return [e.model_dump_json() for e in events], str(events[-1].id)


async def send_events(target: Target, frames: list[str], checkpoint_every: int,
                      seen: Observer | None) -> tuple[float, int]:
    """Prefect's client, on one socket: returns the seconds from the first frame to the pong
    of the final ping (the handshake is not included) and how many events `seen` had seen
    at that pong (before the close, whose handshake waits for the far end to read up to it).
    Closes the socket cleanly."""
    ws = await open_prefect(target, "/api/events/in")
    try:
        start = time.perf_counter()
        for i, frame in enumerate(frames, 1):
            await ws.send(frame)
            if checkpoint_every and i % checkpoint_every == 0:
                await asyncio.wait_for(await ws.ping(), STEP_TIMEOUT)
        await asyncio.wait_for(await ws.ping(), STEP_TIMEOUT)
        return time.perf_counter() - start, seen.pings if seen else 0
    finally:
        await ws.close()


class Cpu:
    """CPU seconds (user + system, children included) of the stack's processes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
            out[name] = total
        return out


async def run_once(target: Target, direct: Target, n: int, checkpoint_every: int, cpu: Cpu,
                   tag: str) -> dict[str, float]:
    rid = f"prefectstack.bench.{tag}"
    frames, last_id = build_events(rid, n)
    async with Observer(direct, rid) as observer:
        observer.last_id = last_id
        before = cpu.sample()
        start = time.perf_counter()
        sent, at_pong = await send_events(target, frames, checkpoint_every, observer)
        timeout = 60.0 + n / 50
        try:
            await asyncio.wait_for(observer.last_seen.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{tag}: the last event never arrived on events/out "
                               f"({observer.pings}/{n} seen in {timeout:.0f}s)") from None
        delivered = observer.last_at - start
        after = cpu.sample()
        # Late duplicates or stragglers are not waited for: ordered delivery ends here.
        seen = observer.pings
    result = {"sent_rate": n / sent, "delivered_rate": n / delivered, "sent_s": sent,
              "delivered_s": delivered, "observed": float(seen),
              "undelivered_at_pong": float(n - at_pong)}
    for name in cpu.procs:
        result[f"cpu_{name}_per_1k"] = (after[name] - before[name]) * 1000 / n
    return result


async def open_latency(target: Target, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        ws = await open_prefect(target, "/api/events/in")
        times.append((time.perf_counter() - start) * 1000)
        await ws.close()
    return times


def persisted(api: str, rid: str, auth: str) -> int:
    body = json.dumps({"filter": {"resource": {"id": [rid]}, "event": {"name": ["bench.ping"]},
                                  "occurred": time_window()}, "limit": 1}).encode()
    request = urllib.request.Request(f"{api}/api/events/filter", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Basic " + base64.b64encode(
                                                  auth.encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.load(response)["total"])


def wait_persisted(api: str, expected: dict[str, int],
                   auth: str) -> tuple[dict[str, int], float]:
    """Counts per resource id once all are persisted, the persister stalls for PERSIST_STALL
    seconds, or PERSIST_TIMEOUT passes; and the seconds waited."""
    start = time.monotonic()
    counts = dict.fromkeys(expected, 0)
    progress_at = start
    while time.monotonic() - start < PERSIST_TIMEOUT:
        now_counts = {rid: persisted(api, rid, auth) for rid in expected}
        if now_counts != counts:
            counts, progress_at = now_counts, time.monotonic()
        if counts == expected or time.monotonic() - progress_at > PERSIST_STALL:
            break
        time.sleep(2)
    return counts, time.monotonic() - start


def run_timeout(n: int) -> float:
    """A bound on one whole run (a `send` blocks while the far end does not read)."""
    return 120.0 + n / 20


async def measure(targets: dict[str, Target], opens: dict[str, Target], args: argparse.Namespace,
                  cpu: Cpu, run_id: str) -> dict[str, Any]:
    direct = targets["direct"]
    for name, target in targets.items():  # warm-up: imports, pools, caches
        await asyncio.wait_for(run_once(target, direct, WARMUP_EVENTS, args.checkpoint_every,
                                        cpu, f"{run_id}.warmup.{name}"),
                               run_timeout(WARMUP_EVENTS))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    expected: dict[str, int] = {}
    for rep in range(args.reps):
        order = TARGETS[rep % len(TARGETS):] + TARGETS[:rep % len(TARGETS)]
        for name in order:
            tag = f"{run_id}.{name}.{rep}"
            runs[name].append(await asyncio.wait_for(
                run_once(targets[name], direct, args.events, args.checkpoint_every, cpu, tag),
                run_timeout(args.events)))
            expected[f"prefectstack.bench.{tag}"] = args.events
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    latencies = {name: await asyncio.wait_for(open_latency(target, args.opens),
                                              60.0 + args.opens * 2 * OPEN_TIMEOUT)
                 for name, target in opens.items()}
    return {"runs": runs, "opens": latencies, "expected": expected}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--opens", type=int, default=50, help="connections timed for p50")
    parser.add_argument("--checkpoint-every", type=int, default=700,
                        help="ping every N events, as PrefectEventsClient (0: only at the end)")
    args = parser.parse_args()
    if args.events < 1 or args.reps < 1 or args.opens < 1:
        sys.exit("--events, --reps and --opens must be positive")

    work = Path(tempfile.mkdtemp(prefix="prefectstack-bench-relay-"))
    ports = {k: free_port() for k in ("pg", "redis", "api", "https", "http", "auth")}
    (work / "stack.yaml").write_text(
        "version: 1\nname: bench\nstate_dir: state\n"
        f"postgres: {{port: {ports['pg']}}}\nredis: {{port: {ports['redis']}}}\n"
        f"api: {{port: {ports['api']}, replicas: 1}}\nauth: {{port: {ports['auth']}}}\n"
        f"edge: {{https_port: {ports['https']}, http_port: {ports['http']}}}\n"
        "workers: []\nexamples: {enabled: false}\n"
    )
    state = work / "state"
    api = f"http://127.0.0.1:{ports['api']}"
    load_before = os.getloadavg()
    try:
        prefectstack("up", "--detach", cwd=work)
        key = prefectstack("keys", "create", "bench", "--role", "developer",
                           cwd=work).strip().splitlines()[-1]
        services = json.loads(prefectstack("status", "--json", cwd=work))["services"]
        pids = {}
        for svc in services:
            for want in CPU_OF:
                if svc["pid"] and (svc["name"] == want or svc["name"].startswith(want + "-")):
                    pids[svc["name"]] = int(svc["pid"])
        tls = ssl.create_default_context(cafile=str(state / "ca.crt"))
        token = f"bench:{key}"
        # The API processes' own server auth string: what the direct path needs (and the
        # relay sends upstream on the client's behalf).
        server = "prefectstack:" + json.loads((state / "secrets.json").read_text())["api_password"]
        basic = ("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
        targets = {
            "direct": Target("direct", f"ws://127.0.0.1:{ports['api']}", server),
            "direct-plain": Target("direct-plain", f"ws://127.0.0.1:{ports['api']}", server,
                                   compression=None),
            "relay": Target("relay", f"ws://127.0.0.1:{ports['auth']}", token),
            "edge": Target("edge", f"wss://localhost:{ports['https']}", token, tls),
        }
        opens = {n: t for n, t in targets.items() if n != "direct-plain"}
        opens["edge+header"] = Target("edge+header", targets["edge"].base, token, tls,
                                       (basic,))
        run_id = f"r{int(time.time())}"
        result = asyncio.run(measure(targets, opens, args, Cpu(pids), run_id))
        counts, persist_wait = wait_persisted(api, result["expected"], server)
        auth_log = state / "logs" / "auth.log"
        log_tail = auth_log.read_text(errors="replace") if auth_log.exists() else ""
    finally:
        subprocess.run([sys.executable, "-m", "prefectstack", "down"], cwd=work, env=CLEAN_ENV,
                       capture_output=True, timeout=300, check=False)
        load_after = os.getloadavg()
        shutil.rmtree(work, ignore_errors=True)
    report(result, counts, persist_wait, args, pids, load_before, load_after)
    problems = [line for line in log_tail.splitlines()
                if any(w in line for w in ("Traceback", "ERROR", "Error", "WARNING"))]
    print(f"auth.log: {len(log_tail.splitlines())} lines, {len(problems)} warnings/errors")
    for line in problems[:20]:
        print(f"  {line}")


def report(result: dict[str, Any], counts: dict[str, int], persist_wait: float,
           args: argparse.Namespace, pids: dict[str, int], load_before: tuple[float, ...],
           load_after: tuple[float, ...]) -> None:
    runs: dict[str, list[dict[str, float]]] = result["runs"]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print(f"\n/api/events/in, one socket, {args.events} events per run, ping every "
          f"{args.checkpoint_every or 'N'}, median of {args.reps} runs; {os.cpu_count()} cores "
          f"(the client shares them with the stack); load avg "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    cpu_names = sorted(pids)
    header = f"{'target':<13}{'sent/s':>8}{'deliv/s':>8}{'x direct':>9}{'@pong':>7}"
    header += "".join(f"{'cpu ' + n + '/1k':>14}" for n in cpu_names)
    print(header + "   delivered/s per run")
    for name in TARGETS:
        ratio = med(name, "delivered_rate") / med("direct", "delivered_rate")
        line = (f"{name:<13}{med(name, 'sent_rate'):>8.0f}{med(name, 'delivered_rate'):>8.0f}"
                f"{ratio:>8.2f}x{med(name, 'undelivered_at_pong'):>7.0f}")
        line += "".join(f"{med(name, f'cpu_{n}_per_1k'):>13.3f}s" for n in cpu_names)
        runs_text = ", ".join(f"{r['delivered_rate']:.0f}" for r in runs[name])
        print(f"{line}   [{runs_text}]")
    print("sent/s: until the final ping's pong; deliv/s: until the last event reached "
          "events/out;\n@pong: events not yet seen on events/out when that pong came back "
          "(Prefect's client\ncounts them confirmed); cpu <process>/1k: CPU seconds per 1000 "
          "events")
    lost = {rid: n for rid, n in counts.items() if n != result["expected"][rid]}
    total = sum(counts.values())
    print(f"\npersisted (POST /api/events/filter, {persist_wait:.0f}s after the last run): "
          f"{total}/{sum(result['expected'].values())}"
          + (f"; short (persister stalled or timed out): {lost}" if lost else ""))
    short_obs = [(name, int(r["observed"])) for name in TARGETS for r in runs[name]
                 if int(r["observed"]) != args.events]
    if short_obs:
        print(f"events/out observer saw fewer than {args.events} (its 256-event backlog "
              f"drops, the last event still arrived): {short_obs}")

    print(f"\nopen + auth handshake, {args.opens} sequential connections")
    print(f"{'target':<12}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, times in result["opens"].items():
        print(f"{name:<12}{pct(times, 0.5):>9.2f}{pct(times, 0.95):>9.2f}{max(times):>9.2f}")

    d, p, r, e = (med(n, "delivered_rate") for n in TARGETS)
    opens = result["opens"]
    auth_cpu = med("edge", "cpu_auth_per_1k") if "cpu_auth_per_1k" in runs["edge"][0] else 0.0
    print(f"\nevents/in: direct {d:.0f}/s, edge {e:.0f}/s ({e / d:.2f}x), relay-only {r:.0f}/s "
          f"({r / d:.2f}x), direct without deflate {p:.0f}/s ({p / d:.2f}x); auth CPU "
          f"{auth_cpu:.3f}s/1k events via edge; open p50 direct "
          f"{pct(opens['direct'], 0.5):.1f} ms, edge {pct(opens['edge'], 0.5):.1f} ms")
    print(json.dumps({"runs": runs, "opens_p50_ms": {n: pct(t, 0.5) for n, t in opens.items()},
                      "persisted": total}))


if __name__ == "__main__":
    main()
