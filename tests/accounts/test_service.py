"""The accounts service's entrypoints: unit (worker_factory), interface (real entrypoints) and
integration over the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from kombu import Connection, Consumer, Queue
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_hook, worker_factory
from sqlalchemy.orm import Session

from services.accounts import directory, tokens
from services.accounts.exceptions import Forbidden, InvalidInput, NotFound, RosterRejected, TokenInvalid
from services.accounts.service import AccountsService
from services.common.db import make_engine
from services.common.events import event_exchange, read_cloud_event_headers
from services.common.scope import Scope


def test_worker_create_school_commits_and_returns_it(session, city):
    service = worker_factory(AccountsService, db=session)
    school = service.create_school(city["admin"].to_dict(), {
        "bureau_id": city["bureau"]["id"], "code": "QS-10", "name": "云岭小学", "kind": "branch",
    })
    session.expire_all()
    assert directory.get_school(session, city["admin"], school["id"])["name"] == "云岭小学"


def test_worker_rejects_a_missing_scope(session):
    service = worker_factory(AccountsService, db=session)
    with pytest.raises(InvalidInput, match="scope"):
        service.list_schools(None)


def test_worker_refuses_broken_base64_roster(session, city):
    service = worker_factory(AccountsService, db=session)
    with pytest.raises(InvalidInput, match="base64"):
        service.import_roster(city["admin"].to_dict(), city["master"]["id"], "r.csv", "***")


# --- over the real broker and database ---------------------------------------------------------------


@pytest.fixture
def accounts_db(service_config):
    engine = make_engine(service_config["DATABASE_URL"].replace("{service}", "accounts"))
    with Session(engine, expire_on_commit=False) as db_session:
        yield db_session
    engine.dispose()


@pytest.fixture
def bureau(accounts_db, unique):
    with accounts_db.begin():
        created = directory.create_bureau(accounts_db, {"code": unique("b"), "name": "测试教育局"})
        admin = Scope.bureau_admin(created["id"])
        school = directory.create_school(accounts_db, admin, {
            "bureau_id": created["id"], "code": "S1", "name": "松林小学", "kind": "branch",
        })
        other = directory.create_school(accounts_db, admin, {
            "bureau_id": created["id"], "code": "S2", "name": "竹溪小学",
        })
    return {"admin": admin, "school": school, "other": other}


@pytest.mark.integration
def test_entrypoint_hook_health_checks_the_database(container_factory, service_config):
    container = container_factory(AccountsService, service_config)
    container.start()
    with entrypoint_hook(container, "health") as health:
        assert health() == {"service": "accounts", "status": "ok"}


@pytest.mark.integration
def test_typed_errors_survive_the_rpc_boundary(runner_factory, service_config, bureau):
    runner = runner_factory(service_config, AccountsService)
    runner.start()
    school_scope = Scope(bureau["admin"].bureau_id, "school", bureau["school"]["id"], "write").to_dict()
    with ClusterRpcProxy(service_config, timeout=10) as rpc:
        with pytest.raises(Forbidden, match="outside this token's scope"):
            rpc.accounts.get_school(school_scope, bureau["other"]["id"])
        with pytest.raises(NotFound):
            rpc.accounts.get_teacher(school_scope, 987654)
        with pytest.raises(TokenInvalid):
            rpc.accounts.verify_token("lx_not-a-token")
        with pytest.raises(InvalidInput) as caught:
            rpc.accounts.create_teacher(school_scope, {"school_id": bureau["school"]["id"], "name": 7})
        assert set(caught.value.fields) == {"staff_number", "name"}
        rows = "工号,姓名\n,没有工号\n".encode()
        with pytest.raises(RosterRejected) as rejected:
            rpc.accounts.import_roster(school_scope, bureau["school"]["id"], "r.csv", base64.b64encode(rows).decode())
        assert rejected.value.fields["rows"][0]["row"] == 2


@pytest.mark.integration
def test_token_issued_over_rpc_verifies_and_revokes(runner_factory, service_config, bureau):
    runner_factory(service_config, AccountsService).start()
    with ClusterRpcProxy(service_config, timeout=10) as rpc:
        issued = rpc.accounts.issue_token(bureau["admin"].to_dict(), {
            "scope_kind": "school", "scope_id": bureau["school"]["id"], "label": "松林", "access": "read",
        })
        scope = rpc.accounts.verify_token(issued["token"])
        assert (scope["kind"], scope["id"]) == ("school", bureau["school"]["id"])
        page = rpc.accounts.list_teachers(scope, bureau["school"]["id"])
        assert page == {"items": [], "next_after_id": None}
        rpc.accounts.revoke_token(bureau["admin"].to_dict(), issued["id"])
        with pytest.raises(TokenInvalid, match=r"^The token is not valid\.$"):
            rpc.accounts.verify_token(issued["token"])


@pytest.mark.integration
def test_committed_changes_are_published_with_cloudevents_headers(runner_factory, service_config, bureau, unique):
    queue = Queue(unique("subscriber-"), exchange=event_exchange("accounts"), routing_key="bureau.*.teacher.*",
                  durable=False, auto_delete=True)
    received: list = []
    with Connection(service_config["AMQP_URI"]) as connection:
        queue(connection).declare()
        runner_factory(service_config, AccountsService).start()
        with ClusterRpcProxy(service_config, timeout=10) as rpc:
            teacher = rpc.accounts.create_teacher(bureau["admin"].to_dict(), {
                "school_id": bureau["school"]["id"], "staff_number": "N1", "name": "钟亦白",
            })
            with pytest.raises(InvalidInput):  # rolled back: must publish nothing
                rpc.accounts.create_teacher(bureau["admin"].to_dict(), {"school_id": bureau["school"]["id"]})
        with Consumer(connection, [queue], callbacks=[lambda body, message: received.append(message)],
                      accept=["json"]):
            deadline = 10
            while not received and deadline > 0:
                try:
                    connection.drain_events(timeout=1)
                except TimeoutError:
                    deadline -= 1
            with contextlib.suppress(TimeoutError):  # anything more would be a wrongly published rollback
                connection.drain_events(timeout=1)
    assert len(received) == 1
    message = received[0]
    attributes = read_cloud_event_headers(message.headers)
    assert attributes["type"] == "cn.lianxiao.accounts.teacher.joined"
    assert attributes["source"] == "/lianxiao/accounts"
    assert attributes["specversion"] == "1.0"
    assert attributes["subject"] == f"teacher/{teacher['id']}"
    assert message.properties["message_id"] == attributes["id"]
    body = json.loads(message.body)
    assert body["id"] == teacher["id"] and body["school_id"] == bureau["school"]["id"]
    assert tokens.TOKEN_PREFIX not in message.body.decode() if isinstance(message.body, bytes) else True
