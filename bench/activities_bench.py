"""Activities benchmark: a fictional city's uploads through the whole platform, beside the broker's own rate.

    .venv/bin/python bench/activities_bench.py [--batches 10] [--batch-size 500] [--schools 20] [--teachers 200]

One run on 127.0.0.1, with its own RabbitMQ vhost and PostgreSQL databases (created here, dropped after):
accounts, activities and reporting as `make run` starts them (one process each) and the gateway under
gunicorn (its own gunicorn.conf.py). After the roster has reached activities and reporting, one client
sends `--batches` sequential `POST /v1/activities/batch` calls of `--batch-size` blog posts. Measured:
  - accepted activities/s (first request to last answer), events published/s (to the last outbox row
    confirmed by the broker) and projected events/s (to the last event applied by reporting), all from
    the same start, so each is the pipeline's rate up to that stage;
  - the time from the last accepted batch until the month bulletin through the gateway counts them all;
  - p50 / p99 of a batch call; the peak RSS (VmHWM) of every process;
  - the yardstick, in the same run: RabbitMQ's own rate for persistent messages of the same size through
    one durable queue, published with a confirm per message (as nameko and kombu do by default) and with
    one confirm wait per batch of the same size as the relay's, consumed and acknowledged one by one.
Not a test: it prints figures and the goals of issue 13 beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import requests  # noqa: E402
from gateway_bench import (  # noqa: E402  (one set of process and broker helpers for the benchmarks)
    AMQP_BASE,
    GUNICORN,
    GUNICORN_CONF,
    POSTGRES_SERVER,
    RABBIT_API,
    Process,
    create_vhost,
    delete_vhost,
    free_port,
    peak_rss_mb,
)

SERVICES = ("accounts", "activities", "reporting")
BUREAU_ZONE = ZoneInfo("Asia/Shanghai")
GOALS = {"rate_ratio": 0.5, "bulletin_seconds": 10.0, "p99_seconds": 1.0}


def seed(database_url: str, schools: int, teachers: int) -> str:
    """A migrated accounts database with an invented bureau; returns a bureau write token."""
    from sqlalchemy.orm import Session

    from services.accounts import directory, tokens
    from services.common import migrations
    from services.common.db import make_engine
    from services.common.scope import Scope

    migrations.upgrade("accounts", database_url)
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        bureau = directory.create_bureau(session, {"code": "bench-city", "name": "压测市教育局"})
        admin = Scope.bureau_admin(bureau["id"])
        school_ids = [directory.create_school(session, admin, {
            "bureau_id": bureau["id"], "code": f"S{number:03d}", "name": f"压测第{number}学校"})["id"]
            for number in range(schools)]
        for number in range(teachers):
            directory.create_teacher(session, admin, {
                "school_id": school_ids[number % schools], "staff_number": f"T{number:05d}",
                "name": f"测试教师{number}", "subject": "数学", "grade": "七年级"})
        token = tokens.issue_token(session, admin, {
            "scope_kind": "bureau", "scope_id": bureau["id"], "label": "bench", "access": "write"})["token"]
        session.commit()
    engine.dispose()
    return token


def scalar(url: str, sql: str) -> Any:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def entrypoint_seconds(port: int, entrypoint: str) -> float:
    """Mean duration of one entrypoint, from the service's own metrics."""
    totals = {"sum": 0.0, "count": 0.0}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        for part in totals:
            name = f"lianxiao_entrypoint_duration_seconds_{part}{{"
            if line.startswith(name) and f'entrypoint="{entrypoint}"' in line:
                totals[part] += float(line.rsplit(" ", 1)[1])
    return totals["sum"] / totals["count"] if totals["count"] else float("nan")


def consumed_queues(vhost: str) -> int:
    """Event queues of the run that have a consumer (through the management API)."""
    queues = requests.get(f"{RABBIT_API}/queues/{quote(vhost, safe='')}", timeout=10).json()
    return sum(1 for queue in queues if queue["name"].startswith("evt-") and queue.get("consumers", 0) > 0)


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll until `condition()` is true; returns the wall time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def blog_posts(teacher_ids: list[int], count: int, start: int, month_start: datetime) -> list[dict[str, Any]]:
    return [{
        "id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_ids[(start + index) % len(teacher_ids)],
        "occurred_at": (month_start + timedelta(minutes=start + index)).isoformat(),
        "details": {"title": f"教研随笔 {start + index}", "word_count": 800 + index % 500},
    } for index in range(count)]


# --- the yardstick: the broker alone --------------------------------------------------------------------


def broker_rate(uri: str, body: bytes, count: int, batch: int) -> float:
    """Persistent messages of `body`'s size through one durable queue, published with confirms (one wait per
    message when `batch` is 1, else per `batch`) and consumed with an ack each; messages per second."""
    from kombu import Connection, Exchange, Queue

    from services.common.events import ConfirmedBatches

    name = f"bench-yardstick-{batch}-{uuid.uuid4().hex[:6]}"
    queue = Queue(name, exchange=Exchange(name, type="direct", durable=True), routing_key=name, durable=True)
    consumed = threading.Event()
    finished_at = [0.0]

    def consume() -> None:
        received = [0]
        with Connection(uri) as connection:
            def on_message(_body: Any, message: Any) -> None:
                message.ack()
                received[0] += 1
                if received[0] == count:
                    finished_at[0] = time.monotonic()
                    consumed.set()

            with connection.Consumer(queue, callbacks=[on_message], accept=["application/json"], prefetch_count=500):
                ready.set()
                deadline = time.monotonic() + 120
                while not consumed.is_set() and time.monotonic() < deadline:
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        continue

    ready = threading.Event()
    with Connection(uri) as connection:
        queue(connection.default_channel).declare()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    ready.wait(10)
    started = time.monotonic()
    if batch == 1:
        with Connection(uri, transport_options={"confirm_publish": True}) as connection:
            producer = connection.Producer()
            for _ in range(count):
                producer.publish(body, exchange=queue.exchange, routing_key=name, delivery_mode=2,
                                 content_type="application/json", content_encoding="utf-8", retry=False)
    else:
        with Connection(uri) as connection:
            batches = ConfirmedBatches(connection)
            message = {"body": body, "routing_key": name, "headers": {}, "message_id": "", "type": "bench"}
            for offset in range(0, count, batch):
                batches.publish(queue.exchange, [message] * min(batch, count - offset))
    consumer.join(130)
    with Connection(uri) as connection:
        queue(connection.default_channel).delete()
    if not consumed.is_set():
        raise SystemExit("the yardstick's consumer did not receive every message")
    return count / (finished_at[0] - started)


# --- the run --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--schools", type=int, default=20)
    parser.add_argument("--teachers", type=int, default=200)
    parser.add_argument("--yardstick-messages", type=int, default=5000)
    args = parser.parse_args()
    total = args.batches * args.batch_size
    run = f"lxbench_act_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    database_template = f"{POSTGRES_SERVER.rsplit('/', 1)[0]}/{run}_{{service}}"
    urls = {service: database_template.replace("{service}", service) for service in SERVICES}
    log_dir = REPO_ROOT / "var" / "bench" / run
    log_dir.mkdir(parents=True, exist_ok=True)
    create_vhost(run)
    amqp_uri = f"{AMQP_BASE}/{run}"
    processes: list[Process] = []
    failed = True
    try:
        from services.common import migrations

        token = seed(urls["accounts"], args.schools, args.teachers)
        for service in ("activities", "reporting"):
            migrations.upgrade(service, urls[service])
        env = {"AMQP_URI": amqp_uri, "DATABASE_URL": database_template, "LOG_LEVEL": "WARNING"}
        # Subscribers first: accounts publishes the roster as soon as it starts, and an event published
        # before a subscriber's queue exists is not that subscriber's (in production the queues persist).
        metrics_ports = {service: free_port() for service in SERVICES}
        for service in ("activities", "reporting", "accounts"):
            processes.append(Process(service, [sys.executable, "-m", "services.common.runner", service],
                                     {**env, "METRICS_PORT": str(metrics_ports[service])}, log_dir, REPO_ROOT))
            if service == "reporting":
                wait_until(lambda: consumed_queues(run) >= 4, 60, "the subscribers' queues")
        port = free_port()
        gateway = Process("gateway", [str(GUNICORN), "-c", str(GUNICORN_CONF), "services.gateway.wsgi:app"], {
            **env, "GATEWAY_BIND": f"127.0.0.1:{port}", "HOME": str(log_dir),  # its own gunicorn control socket
            "GATEWAY_RATE_LIMIT_PER_SECOND": "1000000", "GATEWAY_RATE_LIMIT_BURST": "1000000",
        }, log_dir, REPO_ROOT)
        processes.append(gateway)
        base = f"http://127.0.0.1:{port}/v1"
        auth = {"Authorization": f"Bearer {token}"}
        # The roster travels as accounts' events: wait until both consumers know every teacher.
        wait_until(lambda: (scalar(urls["activities"], "SELECT count(*) FROM roster_teachers") or 0) >= args.teachers,
                   120, "activities' roster")
        wait_until(lambda: (scalar(urls["reporting"], "SELECT count(*) FROM rpt_teachers") or 0) >= args.teachers,
                   120, "reporting's roster")
        teacher_ids = sorted(scalar(urls["activities"], "SELECT array_agg(id) FROM roster_teachers"))
        now_local = datetime.now(BUREAU_ZONE)
        month_start = now_local.replace(day=1, hour=8, minute=0, second=0, microsecond=0)
        month_key = month_start.strftime("%Y-%m")
        bulletin_url = f"{base}/bulletins/month/{month_key}"

        def bulletin_activities() -> int:
            response = requests.get(bulletin_url, headers=auth, timeout=30)
            response.raise_for_status()
            return int(response.json()["city"]["activities"])

        wait_until(lambda: requests.get(bulletin_url, headers=auth, timeout=10).status_code == 200, 60, "the gateway")
        print(f"activities benchmark: {args.batches} x POST /v1/activities/batch of {args.batch_size} blog posts "
              f"({total} activities), one client; {args.schools} schools, {args.teachers} teachers; "
              f"{os.cpu_count()} CPUs shared by broker, database, services, gateway and client")

        # The yardstick first, while the platform idles: the same size as an activity's event body.
        event_size = 1500  # an activity.recorded.blog_post statement is ~1.4-1.6 KB; checked below
        body = json.dumps({"padding": "x" * (event_size - 15)}).encode()
        per_message = broker_rate(amqp_uri, body, args.yardstick_messages, 1)
        per_batch = broker_rate(amqp_uri, body, args.yardstick_messages, 500)

        latencies: list[float] = []
        started = time.time()
        for number in range(args.batches):
            items = blog_posts(teacher_ids, args.batch_size, number * args.batch_size, month_start)
            began = time.monotonic()
            response = requests.post(f"{base}/activities/batch", headers=auth, json=items, timeout=60)
            latencies.append(time.monotonic() - began)
            response.raise_for_status()
            outcome = response.json()
            if outcome["accepted"] != args.batch_size:
                raise SystemExit(f"batch {number}: {outcome['rejected']} rejected: {outcome['results'][:2]}")
        accepted_at = time.time()
        bulletin_at = wait_until(lambda: bulletin_activities() >= total, 600, "the bulletin", interval=0.2)
        wait_until(lambda: scalar(urls["activities"], "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0,
                   120, "the outbox")
        published_at = scalar(urls["activities"], "SELECT extract(epoch FROM max(published_at)) FROM outbox")
        projected_at = scalar(urls["reporting"], "SELECT extract(epoch FROM max(processed_at)) FROM processed_events "
                                                 "WHERE type LIKE '%activity.recorded%'")
        projected = scalar(urls["reporting"],
                           "SELECT count(*) FROM processed_events WHERE type LIKE '%activity.recorded%'")
        size = scalar(urls["activities"], "SELECT avg(length(body)) FROM outbox")
        freshness = requests.get(bulletin_url, headers=auth, timeout=30).json().get("freshness")

        rates = {
            "accepted": total / (accepted_at - started),
            "published": total / (float(published_at) - started),
            "projected": projected / (float(projected_at) - started),
        }
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        lag = bulletin_at - accepted_at
        print(f"{'stage':<38}{'per second':>11}{'x broker':>10}")
        print(f"{'broker yardstick, confirm per message':<38}{per_message:>11.0f}{1:>10.2f}")
        print(f"{'broker, one confirm wait per 500':<38}{per_batch:>11.0f}{per_batch / per_message:>10.2f}")
        for stage, rate in rates.items():
            print(f"{stage + ' activities' if stage == 'accepted' else stage + ' events':<38}"
                  f"{rate:>11.0f}{rate / per_message:>10.2f}")
        print(f"(broker messages {event_size} B; activity events average {float(size):.0f} B)")
        print(f"batch call of {args.batch_size}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
              f"(goal p99 <= {GOALS['p99_seconds']:.0f} s) {'OK' if p99 <= GOALS['p99_seconds'] else 'ABOVE GOAL'}")
        within = lag <= GOALS["bulletin_seconds"]
        in_service = entrypoint_seconds(metrics_ports["activities"], "record_activities")
        print(f"  of which inside activities' record_activities (mean of {args.batches}): {in_service * 1000:.0f} ms")
        print(f"last batch accepted -> bulletin counts all {total}: {lag:.1f} s "
              f"(goal <= {GOALS['bulletin_seconds']:.0f} s) {'OK' if within else 'ABOVE GOAL'}")
        worst = min(rates["accepted"], rates["projected"]) / per_message
        print(f"accepted and projected vs the broker's confirmed rate: {worst:.2f}x "
              f"(goal >= {GOALS['rate_ratio']}) {'OK' if worst >= GOALS['rate_ratio'] else 'BELOW GOAL'}")
        print(f"bulletin freshness: {freshness}")
        peaks = {process.name: peak_rss_mb(process.popen.pid) for process in processes}
        for number, pid in enumerate(gateway.children()):
            peaks[f"gateway worker {number}"] = peak_rss_mb(pid)
        print("peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in peaks.items()))
        failed = False
    finally:
        for process in reversed(processes):
            process.stop()
        delete_vhost(run)
        from sqlalchemy import create_engine

        admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for url in urls.values():
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        admin.dispose()
        if failed:
            print(f"logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
