"""Gateway benchmark: an authenticated read through the gateway vs. a bare WSGI app doing the same read.

    .venv/bin/python bench/gateway_bench.py [--seconds 15] [--processes 2] [--threads 8] [--teachers 20]

Both targets run under gunicorn with the gateway's own gunicorn.conf.py (gthread, 2 workers x 8 threads)
on 127.0.0.1, against one PostgreSQL database this script creates (and drops): a school with
`--teachers` teachers. The read is "list one school's teachers" (GET /v1/schools/{id}/teachers):
  - gateway: bearer token (cached) → rate limit (set high, so it counts but never refuses) → RPC over
    RabbitMQ (its own vhost, created and deleted here) → accounts (nameko) → PostgreSQL;
  - bare: the same `directory.list_teachers` call on a SQLAlchemy session in the gunicorn worker.
The same bounded load generator (processes x threads, each a keep-alive requests.Session, for a fixed
time after a warm-up) hits each target in turn. Prints req/s, median and p99 latency, the ratio
gateway/bare (goal >= 0.5) and the peak RSS (VmHWM) of every gateway worker (budget <= 150 MB).
Everything shares this machine's cores: the figures include the load generator's own CPU use.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402

POSTGRES_SERVER = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672")
RABBIT_API = os.environ.get("BENCH_RABBIT_API", "http://guest:guest@127.0.0.1:15672/api")
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
GUNICORN_CONF = REPO_ROOT / "services" / "gateway" / "gunicorn.conf.py"
RSS_BUDGET_MB = 150.0
RATIO_GOAL = 0.5


# --- the bare app (imported by gunicorn as gateway_bench:bare_app) ------------------------------------

_bare_state: dict[str, Any] = {}
_bare_lock = threading.Lock()


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """GET /schools/<id>/teachers: the same read accounts does, straight from this process."""
    from sqlalchemy.orm import Session

    from services.accounts import directory
    from services.common.db import make_engine
    from services.common.scope import Scope

    with _bare_lock:  # one engine (pool) per worker process, made on first use, after the fork
        if "engine" not in _bare_state:
            _bare_state["engine"] = make_engine(os.environ["BARE_DATABASE_URL"])
            _bare_state["scope"] = Scope.from_dict(json.loads(os.environ["BARE_SCOPE"]))
    school_id = int(environ["PATH_INFO"].rstrip("/").split("/")[-2])
    with Session(_bare_state["engine"]) as session:
        page = directory.list_teachers(session, _bare_state["scope"], school_id, limit=100)
    body = json.dumps(page, ensure_ascii=False).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


# --- setup and teardown -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def create_vhost(name: str) -> None:
    vhost = quote(name, safe="")
    requests.put(f"{RABBIT_API}/vhosts/{vhost}", timeout=10).raise_for_status()
    requests.put(f"{RABBIT_API}/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"},
                 timeout=10).raise_for_status()


def delete_vhost(name: str) -> None:
    requests.delete(f"{RABBIT_API}/vhosts/{quote(name, safe='')}", timeout=10)


def seed(database_url: str, teachers: int) -> tuple[int, str, dict[str, Any]]:
    """A migrated accounts database with one school of `teachers` invented teachers; returns
    (school id, a read token of that school, that token's scope)."""
    from sqlalchemy.orm import Session

    from services.accounts import directory, tokens
    from services.common import migrations
    from services.common.db import make_engine
    from services.common.scope import Scope

    migrations.upgrade("accounts", database_url)
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        bureau = directory.create_bureau(session, {"code": "bench", "name": "压测市教育局"})
        admin = Scope.bureau_admin(bureau["id"])
        school = directory.create_school(
            session, admin, {"bureau_id": bureau["id"], "code": "B-01", "name": "压测学校"}
        )
        for number in range(teachers):
            directory.create_teacher(session, admin, {
                "school_id": school["id"], "staff_number": f"B{number:04d}", "name": f"测试教师{number}",
                "subject": "数学", "grade": "七年级",
            })
        issued = tokens.issue_token(session, admin, {
            "scope_kind": "school", "scope_id": school["id"], "label": "bench", "access": "read",
        })
        session.commit()
        scope = tokens.verify_token(session, issued["token"])
    engine.dispose()
    return school["id"], issued["token"], scope


class Process:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.popen = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        self.log.close()

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(url: str, headers: dict[str, str], process: Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise SystemExit(f"{process.name} exited; see {process.log_path}")
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{process.name} did not answer {url} within {timeout} s; see {process.log_path}")


# --- load generator -----------------------------------------------------------------------------------


def _load_process(url: str, headers: dict[str, str], threads: int, warmup: float, seconds: float,
                  results: Any) -> None:
    start = time.monotonic() + 0.2
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        own: list[float] = []
        own_errors = 0
        with requests.Session() as session:
            session.headers.update(headers)
            while True:
                began = time.monotonic()
                if began >= stop_at:
                    break
                try:
                    ok = session.get(url, timeout=10).status_code == 200
                except requests.RequestException:
                    ok = False
                ended = time.monotonic()
                if began >= measure_from and ended <= stop_at:
                    if ok:
                        own.append(ended - began)
                    else:
                        own_errors += 1
        with lock:
            latencies.extend(own)
            errors[0] += own_errors

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((latencies, errors[0]))


def load(url: str, headers: dict[str, str], processes: int, threads: int, warmup: float,
         seconds: float) -> dict[str, float]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    pool = [context.Process(target=_load_process, args=(url, headers, threads, warmup, seconds, results))
            for _ in range(processes)]
    for process in pool:
        process.start()
    latencies: list[float] = []
    errors = 0
    for _ in pool:
        part, part_errors = results.get(timeout=warmup + seconds + 60)
        latencies += part
        errors += part_errors
    for process in pool:
        process.join(timeout=10)
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "errors": errors,
        "rps": count / seconds,
        "median_ms": statistics.median(latencies) * 1000 if count else float("nan"),
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else float("nan"),
    }


# --- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per target")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--threads", type=int, default=8, help="keep-alive connections per load process")
    parser.add_argument("--teachers", type=int, default=20, help="teachers in the school (all on one page)")
    parser.add_argument("--accounts-processes", type=int, default=1,
                        help="accounts service processes (competing consumers; `make run` starts 1)")
    args = parser.parse_args()

    run = f"lxbench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    database_url = f"{POSTGRES_SERVER.rsplit('/', 1)[0]}/{run}_accounts"
    log_dir = REPO_ROOT / "var" / "bench" / run
    log_dir.mkdir(parents=True, exist_ok=True)
    create_vhost(run)
    amqp_uri = f"{AMQP_BASE}/{run}"
    processes: list[Process] = []
    keep_logs = True
    try:
        school_id, token, scope = seed(database_url, args.teachers)
        auth = {"Authorization": f"Bearer {token}"}
        accounts_processes = [
            Process(f"accounts{index}", [sys.executable, "-m", "services.common.runner", "accounts"],
                    {"AMQP_URI": amqp_uri, "ACCOUNTS_DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
                    log_dir, REPO_ROOT)
            for index in range(args.accounts_processes)
        ]
        processes += accounts_processes
        gateway_port, bare_port = free_port(), free_port()
        gateway = Process("gateway", [str(GUNICORN), "-c", str(GUNICORN_CONF), "services.gateway.wsgi:app"], {
            "AMQP_URI": amqp_uri, "GATEWAY_BIND": f"127.0.0.1:{gateway_port}", "LOG_LEVEL": "WARNING",
            "GATEWAY_RATE_LIMIT_PER_SECOND": "1000000", "GATEWAY_RATE_LIMIT_BURST": "1000000",
        }, log_dir, REPO_ROOT)
        processes.append(gateway)
        bare = Process("bare", [str(GUNICORN), "-c", str(GUNICORN_CONF), "--chdir", str(REPO_ROOT / "bench"),
                                "gateway_bench:bare_app"], {
            "GATEWAY_BIND": f"127.0.0.1:{bare_port}", "BARE_DATABASE_URL": database_url,
            "BARE_SCOPE": json.dumps(scope), "PYTHONPATH": str(REPO_ROOT),
        }, log_dir, REPO_ROOT)
        processes.append(bare)
        path = f"/schools/{school_id}/teachers"
        gateway_url, bare_url = f"http://127.0.0.1:{gateway_port}/v1{path}", f"http://127.0.0.1:{bare_port}{path}"
        wait_for(gateway_url, auth, gateway)
        wait_for(bare_url, {}, bare)
        check = requests.get(gateway_url, headers=auth, timeout=5).json()
        assert len(check["items"]) == args.teachers, check
        assert requests.get(bare_url, timeout=5).json()["items"] == check["items"]

        print(f"gateway benchmark: GET /v1/schools/{{id}}/teachers ({args.teachers} teachers per answer), "
              f"{args.processes}x{args.threads} keep-alive connections, "
              f"{args.accounts_processes} accounts process(es), {args.warmup:g} s warm-up + "
              f"{args.seconds:g} s measured per target, {os.cpu_count()} CPUs shared by everything")
        figures = {}
        servers = {"bare": bare.children(), "gateway": gateway.children(),
                   "accounts": [process.popen.pid for process in accounts_processes]}
        cpu_per_request: dict[str, dict[str, float]] = {}
        for name, url, headers in (("bare", bare_url, {}), ("gateway", gateway_url, auth)):
            before = {part: cpu_seconds(pids) for part, pids in servers.items()}
            load_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            figures[name] = load(url, headers, args.processes, args.threads, args.warmup, args.seconds)
            load_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU is read around warm-up + measurement; estimate the requests served in both at the measured rate.
            served = figures[name]["rps"] * (args.warmup + args.seconds)
            used = {part: cpu_seconds(pids) - before[part] for part, pids in servers.items()}
            used["load generator"] = (load_after.ru_utime + load_after.ru_stime) - (
                load_before.ru_utime + load_before.ru_stime)
            per_request = {part: seconds * 1000 / max(served, 1) for part, seconds in used.items()}
            cpu_per_request[name] = {part: ms for part, ms in per_request.items() if ms >= 0.05}
        print(f"{'target':<9}{'req/s':>9}{'median ms':>11}{'p99 ms':>9}{'errors':>8}   CPU ms per request")
        for name, result in figures.items():
            cpu = ", ".join(f"{part} {ms:.1f}" for part, ms in cpu_per_request[name].items())
            print(f"{name:<9}{result['rps']:>9.0f}{result['median_ms']:>11.1f}{result['p99_ms']:>9.1f}"
                  f"{result['errors']:>8}   {cpu}")
        ratio = figures["gateway"]["rps"] / figures["bare"]["rps"]
        print(f"ratio gateway/bare: {ratio:.2f} (goal >= {RATIO_GOAL}) {'OK' if ratio >= RATIO_GOAL else 'BELOW GOAL'}")
        workers = gateway.children()
        peaks = [peak_rss_mb(pid) for pid in workers]
        listing = ", ".join(f"{peak:.0f} MB" for peak in peaks)
        within = all(peak <= RSS_BUDGET_MB for peak in peaks)
        print(f"gateway workers peak RSS: {listing} (budget <= {RSS_BUDGET_MB:.0f} MB) {'OK' if within else 'OVER'}")
        accounts_rss = ", ".join(f"{peak_rss_mb(process.popen.pid):.0f} MB" for process in accounts_processes)
        print(f"accounts service peak RSS: {accounts_rss}; "
              f"bare workers: {', '.join(f'{peak_rss_mb(pid):.0f} MB' for pid in bare.children())}")
        failed = figures["gateway"]["errors"] or figures["bare"]["errors"]
        if failed:
            print(f"requests failed; logs are in {log_dir}")
            return 1
        keep_logs = False  # keep the processes' logs only when something went wrong
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        delete_vhost(run)
        from services.common import migrations

        migrations.drop_database(database_url)
        if not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
