"""`lianxiao-admin`: the operator's tool for bureaus, schools, roster imports, API tokens and broker users.

It works on the accounts database directly, like the service itself; the events it causes go through
the same outbox, so the accounts service publishes them when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import services  # noqa: F401  (keeps eventlet quiet)
from services.accounts import directory, roster, tokens
from services.accounts.broker_users import BrokerAdmin
from services.accounts.exceptions import RosterRejected
from services.accounts.models import District, School
from services.common.config import amqp_uri, database_url
from services.common.db import make_engine
from services.common.errors import LianxiaoError, NotFound
from services.common.migrations import upgrade
from services.common.progress import ProgressBar
from services.common.scope import Scope


@contextmanager
def accounts_session() -> Iterator[Session]:
    url = database_url("accounts")
    upgrade("accounts", url)
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    finally:
        engine.dispose()


def _bureau_scope(session: Session, code: str) -> Scope:
    return Scope.bureau_admin(directory.find_bureau(session, code)["id"])


def _school_id(session: Session, scope: Scope, code: str) -> int:
    school_id = session.scalar(select(School.id).where(School.bureau_id == scope.bureau_id, School.code == code))
    if school_id is None:
        raise NotFound(f"No school has the code {code!r} in this bureau.")
    return school_id


def _district_id(session: Session, scope: Scope, name: str) -> int:
    district_id = session.scalar(
        select(District.id).where(District.bureau_id == scope.bureau_id, District.name == name)
    )
    if district_id is None:
        raise NotFound(f"No district is named {name!r} in this bureau.")
    return district_id


def cmd_bureau_create(args: argparse.Namespace) -> Any:
    with accounts_session() as session:
        return directory.create_bureau(session, {"code": args.code, "name": args.name, "timezone": args.timezone})


def cmd_district_create(args: argparse.Namespace) -> Any:
    with accounts_session() as session:
        scope = _bureau_scope(session, args.bureau)
        return directory.create_district(session, scope, {"bureau_id": scope.bureau_id, "name": args.name})


def cmd_school_create(args: argparse.Namespace) -> Any:
    with accounts_session() as session:
        scope = _bureau_scope(session, args.bureau)
        data: dict[str, Any] = {"bureau_id": scope.bureau_id, "code": args.code, "name": args.name, "kind": args.kind}
        if args.district:
            data["district_id"] = _district_id(session, scope, args.district)
        if args.link_mbps:
            data["link_capacity_bps"] = int(args.link_mbps * 1_000_000)
        return directory.create_school(session, scope, data)


def cmd_roster_import(args: argparse.Namespace) -> Any:
    path = Path(args.file)
    if not path.is_file():
        raise NotFound(f"No such file: {path}")
    with accounts_session() as session:
        scope = _bureau_scope(session, args.bureau)
        school_id = _school_id(session, scope, args.school)
        bar: ProgressBar | None = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            bar = bar or ProgressBar(total, f"importing {path.name}")
            bar.update(done)

        result = roster.import_roster(session, scope, school_id, path.name, path.read_bytes(), progress)
        if bar is not None:
            bar.close()
        return result


def cmd_token_issue(args: argparse.Namespace) -> Any:
    with accounts_session() as session:
        scope = _bureau_scope(session, args.bureau)
        kind, ident = "bureau", scope.bureau_id
        if args.school:
            kind, ident = "school", _school_id(session, scope, args.school)
        elif args.district:
            kind, ident = "district", _district_id(session, scope, args.district)
        return tokens.issue_token(session, scope, {
            "scope_kind": kind, "scope_id": ident, "label": args.label, "access": args.access,
            "ttl_days": args.ttl_days,
        })


def cmd_token_revoke(args: argparse.Namespace) -> Any:
    with accounts_session() as session:
        return tokens.revoke_token(session, _bureau_scope(session, args.bureau), args.token_id)


def cmd_broker_user_create(args: argparse.Namespace) -> Any:
    with accounts_session() as session:
        bureau_ids = [directory.find_bureau(session, code)["id"] for code in args.bureau]
    admin = BrokerAdmin(args.amqp_uri or amqp_uri(), args.management_url)
    return admin.create_subscriber(args.user, bureau_ids, replace=args.replace)


def cmd_broker_user_delete(args: argparse.Namespace) -> Any:
    return BrokerAdmin(args.amqp_uri or amqp_uri(), args.management_url).delete_subscriber(args.user)


def cmd_demo(args: argparse.Namespace) -> Any:
    from services.accounts.demo import load_demo_bureau

    with accounts_session() as session:
        return load_demo_bureau(session)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lianxiao-admin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], Any], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("bureau-create", cmd_bureau_create, "create a bureau (教育局)")
    sub.add_argument("--code", required=True)
    sub.add_argument("--name", required=True)
    sub.add_argument("--timezone", default="Asia/Shanghai")

    sub = command("district-create", cmd_district_create, "create a district (片区)")
    sub.add_argument("--bureau", required=True, help="bureau code")
    sub.add_argument("--name", required=True)

    sub = command("school-create", cmd_school_create, "create a school")
    sub.add_argument("--bureau", required=True, help="bureau code")
    sub.add_argument("--code", required=True)
    sub.add_argument("--name", required=True)
    sub.add_argument("--kind", choices=["master", "branch", "ordinary"], default="ordinary")
    sub.add_argument("--district", help="district name")
    sub.add_argument("--link-mbps", type=float, help="the school's internet link (default 100 for master schools)")

    sub = command("roster-import", cmd_roster_import, "import a school's teachers from .csv or .xlsx")
    sub.add_argument("--bureau", required=True, help="bureau code")
    sub.add_argument("--school", required=True, help="school code")
    sub.add_argument("file")

    sub = command("token-issue", cmd_token_issue, "issue an API token (shown once)")
    sub.add_argument("--bureau", required=True, help="bureau code")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--district", help="district name: a district token")
    where.add_argument("--school", help="school code: a school token")
    sub.add_argument("--label", required=True)
    sub.add_argument("--access", choices=["read", "write"], default="read")
    sub.add_argument("--ttl-days", type=int, default=90)

    sub = command("token-revoke", cmd_token_revoke, "revoke an API token")
    sub.add_argument("--bureau", required=True, help="bureau code")
    sub.add_argument("token_id", type=int)

    sub = command("broker-user-create", cmd_broker_user_create,
                  "create a RabbitMQ user that may bind only its bureaus' events (password shown once)")
    sub.add_argument("--user", required=True, help="broker user name; its queues must be named <user>.<anything>")
    sub.add_argument("--bureau", required=True, action="append", help="bureau code (repeatable)")
    sub.add_argument("--replace", action="store_true", help="reset an existing user's password and permissions")
    sub.add_argument("--amqp-uri", help="the platform's broker (default AMQP_URI): its vhost and operator user")
    sub.add_argument("--management-url", help="RabbitMQ management API (default RABBITMQ_MANAGEMENT_URL or "
                     "http://<broker host>:15672)")

    sub = command("broker-user-delete", cmd_broker_user_delete, "remove a subscriber's RabbitMQ user")
    sub.add_argument("--user", required=True, help="broker user name")
    sub.add_argument("--amqp-uri", help="the platform's broker (default AMQP_URI): its vhost and operator user")
    sub.add_argument("--management-url", help="RabbitMQ management API (default RABBITMQ_MANAGEMENT_URL or "
                     "http://<broker host>:15672)")

    command("demo", cmd_demo, "load a small fictional bureau and print tokens to try the API")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except RosterRejected as error:
        print(f"error: {error.detail}", file=sys.stderr)
        for problem in error.fields.get("rows", []):
            print(f"  row {problem['row']}, column {problem['column']}: {problem['reason']}", file=sys.stderr)
        return 2
    except LianxiaoError as error:
        print(f"error: {error.detail}", file=sys.stderr)
        for field_name, messages in error.fields.items():
            print(f"  {field_name}: {messages}", file=sys.stderr)
        return 2
    except Exception as error:  # the operator gets one readable sentence, not a traceback
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
