"""Hostile tenant (issue 12): one bureau attacks, the other bureau's requests are measured meanwhile.

The platform runs on the tests' own broker and PostgreSQL (stack.py): accounts and activities as
subprocesses, the gateway under gunicorn, as deployed with LIANXIAO_SCOPE_SECRET set. The attacker is
bureau 青山 (and anyone on 127.0.0.1); the other tenant is bureau 白河, whose requests each need an accounts
RPC. Every row of the "hostile tenant" table says what was sent, the bound that held and the effect on
the other tenant, as measured here. All traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import io
import os
import secrets
import statistics
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

from services.common import migrations
from services.common.errors import Unauthenticated
from services.reporting.exports import neutralise
from tests.accounts.test_roster_bounds import inline_row, template, xlsx
from tests.gateway.gateway_support import Gunicorn, ProxiedGateway, build_city
from tests.gateway.test_slow_clients import SLOW_CONNECTIONS, run_attack

from .figures import HostileRow, record_hostile
from .infra import PostgresCluster, RabbitNode, ServiceProcess
from .stack import Stack

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ATTACKER_IP = {"X-Real-IP": "203.0.113.66"}  # as nginx would set it; the gateway trusts it from 127.0.0.1
VICTIM_IP = {"X-Real-IP": "198.51.100.7"}


@pytest.fixture(scope="module")
def stack(broker: RabbitNode, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The shipped limits on token checks per address (stack.py raises them for the other scenarios).
    platform = Stack(broker, postgres, tmp_path_factory.mktemp("hostile"), GATEWAY_AUTH_ATTEMPTS_PER_SECOND="5",
                     GATEWAY_AUTH_ATTEMPTS_BURST="20")
    try:
        yield platform.start()
    finally:
        platform.stop()


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class OtherTenant:
    """Bureau 白河 reading its teachers (an accounts RPC each) every 50 ms while the attack runs."""

    def __init__(self, stack: Stack) -> None:
        assert stack.city is not None
        self.url = f"{stack.url}/v1/schools/{stack.city.schools['elsewhere']}/teachers"
        self.headers = {"Authorization": f"Bearer {stack.city.tokens['other_bureau_write']}", **VICTIM_IP}
        self.latencies: list[float] = []
        self.started_at: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set() and len(self.latencies) < 2000:
            started = time.perf_counter()
            try:
                status = requests.get(self.url, headers=self.headers, timeout=10).status_code
            except requests.RequestException:
                status = 0
            self.latencies.append(time.perf_counter() - started)
            self.started_at.append(started)
            self.statuses[status] += 1
            time.sleep(0.05)

    def __enter__(self) -> OtherTenant:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"{len(ordered)} requests, {self.failed} failed; p50 {statistics.median(ordered) * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")

    def assert_unharmed(self, limit: float = 1.0) -> None:
        """Every request answered, 99 % within `limit` (the worst one is reported: on this shared 2-core
        machine, other helpers' load moves single requests by hundreds of milliseconds)."""
        assert self.latencies and self.failed == 0, self.statuses
        ordered = sorted(self.latencies)
        assert ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] <= limit, self.summary()


def hostile_rosters() -> dict[str, bytes]:
    header = inline_row(1, "工号", "姓名")
    zip_bomb = template()
    zip_bomb["xl/worksheets/sheet1.xml"] = b" " * (300 * 1024 * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in zip_bomb.items():
            archive.writestr(name, content)
    legit = b"".join(inline_row(n, f"L{n:05d}", f"教师{n}") for n in range(2, 1002))
    return {
        "1 000 000 rows": xlsx(b'<row><c t="s"><v>0</v></c><c t="s"><v>0</v></c></row>' * 1_000_000, shared=["名"]),
        "dimension A1:XFD1048576": xlsx(header + b'<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>',
                                        dimension="A1:XFD1048576"),
        "600 000 shared strings": xlsx(header, shared=[f"s{n}" for n in range(600_000)]),
        "zip bomb (300 MB sheet)": buffer.getvalue(),
        "legitimate 1 000 teachers": xlsx(header + legit),
    }


@pytest.mark.timeout(400)
def test_item_2_roster_uploads(stack: Stack) -> None:
    assert stack.city is not None
    accounts_pid = stack.services["accounts"].process.pid  # type: ignore[union-attr]
    token = stack.city.tokens["bureau_write"]
    school = stack.city.schools["east_two"]
    files = hostile_rosters()
    before = rss_mb(accounts_pid)
    answers: dict[str, int] = {}
    windows: list[tuple[str, float, float]] = []
    with OtherTenant(stack) as other:
        time.sleep(1)
        for _round in range(2):
            for label, content in files.items():
                started = time.perf_counter()
                response = requests.post(f"{stack.url}/v1/schools/{school}/roster", data=content, timeout=60,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": XLSX,
                                                  **ATTACKER_IP})
                answers[label] = response.status_code
                windows.append((label, started, time.perf_counter()))
                assert response.status_code < 500, (label, response.text[:300])
                assert time.perf_counter() - started < 40
        time.sleep(1)
    peak = rss_peak_mb(accounts_pid)
    for latency, at in zip(other.latencies, other.started_at, strict=True):
        if latency > 0.5:
            during = [label for label, begin, end in windows if begin <= at + latency and at <= end]
            print(f"slow other-tenant request: {latency * 1000:.0f} ms during {during}")
    refused = sum(1 for label, status in answers.items() if status == 422)
    record_hostile(HostileRow(
        "2 roster upload", f"{len(files) - 1} hostile XLSX (1 M rows, XFD dimension, 600 k shared strings, zip bomb) "
        "+ a real 1 000-row roster, twice each",
        f"accounts RSS {before:.0f} → peak {peak:.0f} MB (goal ≤ 300); {refused}/{len(files) - 1} hostile files 422, "
        f"the 1 000-row roster {answers['legitimate 1 000 teachers']}",
        f"白河: {other.summary()}",
    ))
    assert peak <= 300
    assert answers["legitimate 1 000 teachers"] == 200
    assert refused == len(files) - 1
    other.assert_unharmed()


def test_item_13_garbage_tokens(stack: Stack) -> None:
    sent = Counter()

    def flood() -> None:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and sum(sent.values()) < 2000:
            try:
                status = requests.get(f"{stack.url}/v1/me", timeout=5, headers={
                    "Authorization": f"Bearer lx_{secrets.token_urlsafe(32)}", **ATTACKER_IP}).status_code
            except requests.RequestException:
                status = 0
            sent[status] += 1
            time.sleep(0.005)

    with OtherTenant(stack) as other:
        time.sleep(1)
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(flood) for _ in range(2)]:
                future.result()
        elapsed = time.monotonic() - started
    total = sum(sent.values())
    record_hostile(HostileRow(
        "13 garbage tokens",
        f"{total} random bearer tokens from one address in {elapsed:.0f} s ({total / elapsed:.0f}/s)",
        f"{sent[401]} reached accounts (401; 20 burst + 5/s per address and worker), {sent[429]} refused 429 "
        "before any RPC",
        f"白河: {other.summary()}",
    ))
    assert sent[401] <= 2 * (20 + 5 * elapsed)  # the limit is per gunicorn worker (2), as documented
    assert sent[0] == 0 and sent[500] == 0
    other.assert_unharmed()


def test_item_10_random_methods(stack: Stack) -> None:
    before = len(requests.get(f"{stack.url}/metrics", timeout=10).content)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: requests.request(f"X{secrets.token_hex(5).upper()}", f"{stack.url}/v1/me",
                                                 timeout=10).status_code, range(2300)))
    started = time.perf_counter()
    after = len(requests.get(f"{stack.url}/metrics", timeout=10).content)
    fetched = time.perf_counter() - started
    record_hostile(HostileRow(
        "10 metric labels", "2 300 requests with random HTTP methods",
        f"/metrics {before / 1024:.0f} KB → {after / 1024:.0f} KB, fetched in {fetched * 1000:.0f} ms "
        "(methods outside the 7 known are 'other')",
        "0 (metrics are per gateway, not per tenant)",
    ))
    assert after - before < 50_000


def test_item_12_hidden_characters(stack: Stack) -> None:
    assert stack.city is not None
    token = {"Authorization": f"Bearer {stack.city.tokens['bureau_write']}", **ATTACKER_IP}
    school = stack.city.schools["east_two"]
    statuses = Counter()
    for name in ("宋\x00知", "宋\u202e知", "宋\u200b知", "\ufeff宋知"):
        statuses[requests.post(f"{stack.url}/v1/schools/{school}/teachers", headers=token, timeout=10,
                               json={"staff_number": "HX-1", "name": name}).status_code] += 1
    first = requests.post(f"{stack.url}/v1/schools/{school}/teachers", headers=token, timeout=10,
                          json={"staff_number": "H0201", "name": "宋知"})
    twin = requests.post(f"{stack.url}/v1/schools/{school}/teachers", headers=token, timeout=10,
                         json={"staff_number": "Ｈ０２０１", "name": "宋知"})
    record_hostile(HostileRow(
        "12 hidden characters", "teacher names with NUL, bidi override, zero-width space, BOM; staff number Ｈ０２０１",
        f"names: {dict(statuses)} (422 = refused with the field); full-width twin of H0201: {twin.status_code}",
        "0 (refused at input; PostgreSQL never sees them)",
    ))
    assert statuses == Counter({422: 4}) and first.status_code == 201 and twin.status_code == 409


def test_item_15_not_yours_is_not_there(stack: Stack) -> None:
    assert stack.city is not None
    token = {"Authorization": f"Bearer {stack.city.tokens['bureau_read']}", **ATTACKER_IP}
    theirs = requests.get(f"{stack.url}/v1/schools/{stack.city.schools['elsewhere']}", headers=token, timeout=10)
    missing = requests.get(f"{stack.url}/v1/schools/2147483000", headers=token, timeout=10)
    revoked = requests.get(f"{stack.url}/v1/me", timeout=10,
                           headers={"Authorization": f"Bearer {stack.city.tokens['revoked']}", **ATTACKER_IP})
    forged = requests.get(f"{stack.url}/v1/me", timeout=10, headers={"Authorization": "Bearer lx_" + "Z" * 43,
                                                                        **ATTACKER_IP})
    same = theirs.json()["detail"].split()[0:1] == missing.json()["detail"].split()[0:1]
    record_hostile(HostileRow(
        "15 leaks by difference", "another bureau's school vs a missing one; a revoked vs an unknown token",
        f"{theirs.status_code} vs {missing.status_code}; token details identical: "
        f"{revoked.json()['detail'] == forged.json()['detail']}",
        "0 (which ids exist is not told)",
    ))
    assert theirs.status_code == missing.status_code == 404 and same
    assert revoked.json()["detail"] == forged.json()["detail"]


def test_item_15_another_bureau_s_activity_is_not_there(stack: Stack) -> None:
    """The other bureau (白河) records a blog post; 青山 names its id every way and gets a missing one's answers."""
    assert stack.city is not None
    city = stack.city
    theirs_token = {"Authorization": f"Bearer {city.tokens['other_bureau_write']}", **VICTIM_IP}
    post = {"id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": city.teachers["elsewhere"],
            "occurred_at": "2026-11-20T15:00:00+08:00", "details": {"title": "白河随笔", "word_count": 300}}
    deadline = time.monotonic() + 30  # accounts announces the teacher to activities asynchronously
    while (created := requests.post(f"{stack.url}/v1/activities", json=post, headers=theirs_token,
                                    timeout=10)).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert created.status_code == 201, created.text
    token = {"Authorization": f"Bearer {city.tokens['bureau_write']}", **ATTACKER_IP}
    ours = {"kind": "blog_post", "teacher_id": city.teachers["east_one"], "occurred_at": "2026-11-20T16:00:00+08:00",
            "details": {"title": "青山随笔", "word_count": 200}}
    comment = {"kind": "comment", "teacher_id": city.teachers["east_one"], "occurred_at": "2026-11-20T17:00:00+08:00"}

    def ask(target: str) -> dict[str, tuple[int, str]]:
        """Every way of naming an activity: the answers' statuses and details, the id masked."""
        attempts = {
            "get": lambda: requests.get(f"{stack.url}/v1/activities/{target}", headers=token, timeout=10),
            "hide": lambda: requests.post(f"{stack.url}/v1/activities/{target}/hide", headers=token, timeout=10,
                                          json={"moderator_id": city.teachers["east_one"], "reason": "广告"}),
            "corrects": lambda: requests.post(f"{stack.url}/v1/activities", headers=token, timeout=10,
                                              json={**ours, "corrects": target}),
            "comment": lambda: requests.post(f"{stack.url}/v1/activities", headers=token, timeout=10, json={
                **comment, "details": {"on_activity_id": target, "text": "有启发"}}),
        }
        answers = {}
        for name, attempt in attempts.items():
            response = attempt()
            answers[name] = (response.status_code, response.json()["detail"].replace(target, "<id>"))
        return answers

    theirs, missing = ask(post["id"]), ask(str(uuid.uuid4()))
    reused = requests.post(f"{stack.url}/v1/activities", headers=token, timeout=10, json={**ours, "id": post["id"]})
    after = requests.get(f"{stack.url}/v1/activities/{post['id']}", headers=theirs_token, timeout=10).json()
    record_hostile(HostileRow(
        "15 leaks by difference (activities)",
        "another bureau's activity id vs a missing one: GET, hide, `corrects`, comment on it; record under its id",
        f"{sum(theirs[name] == missing[name] for name in theirs)}/{len(theirs)} answers identical "
        f"({', '.join(f'{name} {status}' for name, (status, _) in theirs.items())}); its id: {reused.status_code} "
        "with the words for any unusable id, no content",
        f"0 (its post unchanged, hidden: {after['hidden']}, superseded: {after['superseded_by']})",
    ))
    assert theirs == missing and all(status == 404 for status, _ in theirs.values())
    assert reused.status_code == 409 and "白河" not in reused.text
    assert after["hidden"] is False and after["superseded_by"] is None


def test_item_9_made_up_scope_on_the_broker(stack: Stack) -> None:
    assert stack.city is not None
    before = stack.scalar("accounts", "SELECT count(*) FROM api_tokens")
    made_up = {"bureau_id": stack.city.other_bureau_id, "kind": "bureau", "id": stack.city.other_bureau_id,
               "access": "write", "token_id": None}
    refusals = 0
    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri, "serializer": "json"}, timeout=10) as rpc:
        for call in (lambda: rpc.accounts.issue_token(made_up, {"scope_kind": "bureau", "scope_id": made_up["id"],
                                                                "label": "stolen", "access": "write"}),
                     lambda: rpc.accounts.list_teachers(made_up, stack.city.schools["elsewhere"])):
            try:
                call()
            except (Unauthenticated, RemoteError):
                refusals += 1
    after = stack.scalar("accounts", "SELECT count(*) FROM api_tokens")
    record_hostile(HostileRow(
        "9 broker trust", "an AMQP client on the services' vhost calls issue_token / list_teachers with a made-up "
        "scope of the other bureau",
        f"{refusals}/2 refused (scope not signed by accounts); tokens {before} → {after}",
        "0 tokens minted, 0 teachers read",
    ))
    assert refusals == 2 and after == before


def test_item_16_export_formulas() -> None:
    disguised = [" =1+1", "\n=HYPERLINK(\"x\")", "\u200b=1+1", "＝1+1", "\u3000＋cmd", "\ufeff@SUM(A1)"]
    neutralised = sum(1 for text in disguised if neutralise(text) == "'" + text)
    record_hostile(HostileRow(
        "16 export formulas", "bulletin text starting with a space, LF, zero-width space, full-width ＝/＋, BOM+@",
        f"{neutralised}/{len(disguised)} written as text (apostrophe)", "0 formulas run in the other tenant's Excel",
    ))
    assert neutralised == len(disguised)


@pytest.mark.timeout(400)
def test_item_11_sqlite_roster_imports(broker: RabbitNode, tmp_path: Path) -> None:
    """make run's SQLite: back-to-back and concurrent roster imports never answer 500."""
    vhost = f"lxrel-sqlite-{secrets.token_hex(3)}"
    amqp_uri = broker.add_vhost(vhost)
    database_url = f"sqlite:///{tmp_path}/{{service}}.db"
    migrations.upgrade("accounts", database_url.replace("{service}", "accounts"))
    env = {**os.environ, "AMQP_URI": amqp_uri, "DATABASE_URL": database_url, "LOG_LEVEL": "INFO",
           "LIANXIAO_SCOPE_SECRET": secrets.token_hex(16)}
    env.pop("METRICS_PORT", None)
    accounts = ServiceProcess("accounts", env, tmp_path / "accounts.log")
    accounts.start()
    gateway = None
    try:
        city = build_city(database_url.replace("{service}", "accounts"))
        gateway = Gunicorn(amqp_uri, tmp_path / "gateway.log")
        headers = {"Authorization": f"Bearer {city.tokens['bureau_write']}", "Content-Type": XLSX}
        rows = b"".join(inline_row(n, f"S{n:04d}", f"教师{n}") for n in range(2, 502))

        def upload(school: str) -> int:
            return requests.post(f"{gateway.url}/v1/schools/{city.schools[school]}/roster", headers=headers,
                                 data=xlsx(inline_row(1, "工号", "姓名") + rows), timeout=60).status_code

        sequential = [upload("east_one") for _ in range(6)]
        with ThreadPoolExecutor(6) as pool:
            concurrent = list(pool.map(upload, ["east_one", "east_two", "west"] * 2))
    finally:
        if gateway is not None:
            gateway.stop()
        accounts.stop()
    statuses = Counter(sequential + concurrent)
    record_hostile(HostileRow(
        "11 SQLite writes", "6 back-to-back + 6 concurrent 500-row roster imports on make run's SQLite",
        f"answers {dict(statuses)} (0 × 500 'database is locked'; more than 2 running + 2 waiting get 503)",
        "0 (writers take turns; readers never wait)",
    ))
    assert statuses[500] == 0 and sequential == [200] * 6
    assert all(status in (200, 503) for status in concurrent)


@pytest.mark.timeout(200)
def test_item_3_slowloris(stack: Stack, tmp_path: Path) -> None:
    proxied = ProxiedGateway(stack.amqp_uri, tmp_path, GATEWAY_WORKERS="1", GATEWAY_THREADS="8")
    try:
        behind_nginx = run_attack(proxied.port, proxied.url)
    finally:
        proxied.stop()
    plain = Gunicorn(stack.amqp_uri, tmp_path / "plain.log", GATEWAY_WORKERS="1", GATEWAY_THREADS="8")
    try:
        without = run_attack(plain.port, plain.url)
    finally:
        plain.stop()
    record_hostile(HostileRow(
        "3 slow clients", f"{SLOW_CONNECTIONS} connections sending a header byte a second (gunicorn 1 × 8 threads)",
        f"nginx closed all {behind_nginx['slow_closed']} after ≤ {behind_nginx['slow_closed_after_max']:.1f} s "
        f"(client_header_timeout 5 s); without nginx {without['failures']}/{without['requests']} requests timed out",
        f"other client: {behind_nginx['requests']} requests, {behind_nginx['failures']} failed, "
        f"p50 {behind_nginx['p50'] * 1000:.0f} ms, p99 {behind_nginx['p99'] * 1000:.0f} ms",
    ))
    assert behind_nginx["failures"] == 0 and behind_nginx["p99"] < 1.0

