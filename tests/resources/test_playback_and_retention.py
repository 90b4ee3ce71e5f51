"""Signed playback URLs (checked the way nginx checks them), the patrol list, and retention on real files."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from services.common import playback_urls
from services.common.errors import Forbidden, InvalidInput, NotFound
from services.common.storage import FilesystemStorage
from services.resources import catalog, library, playback, retention
from services.resources.exceptions import PlaybackNotConfigured
from services.resources.models import Clip, Resource

from .conftest import BUREAU, EAST, OTHER_BUREAU, add_recording, recording_body, scope

SECRET = "test-playback-secret-湖畔"
SIGNER = playback.Signer(SECRET, lifetime=600, base_url="https://media.example.test")


def check(url: str, now: float, *, key: str | None = None) -> tuple[str, str, bool]:
    """(key, file, valid) of a signed URL, decided like nginx's secure_link (services/common/playback_urls.py)."""
    parts = urlsplit(url)
    assert parts.netloc == "media.example.test"
    _, media, signature, expires, url_key, *file = parts.path.split("/")
    assert media == "media"
    query = parse_qs(parts.query)
    start = float(query["start"][0]) if "start" in query else None
    end = float(query["end"][0]) if "end" in query else None
    ok = playback_urls.valid(key or url_key, int(expires), signature, SECRET, now, start, end)
    return url_key, "/".join(file), ok


def test_playback_urls_open_their_own_recording_and_clip_until_they_expire(db):
    resource_id = add_recording(db, 101, duration_seconds=2400.0,
                                files={"hls": "index.m3u8", "program_mp4": "program.mp4",
                                       "courseware_mp4": "courseware.mp4", "courseware_hls": "courseware.m3u8"})
    other_id = add_recording(db, 101)
    with db.begin():
        clip = library.add_clip(db, scope("school", 101), resource_id,
                                {"title": "分式方程", "start_seconds": 125.5, "end_seconds": 380})
        key = db.get(Resource, resource_id).recording_key
        other_key = db.get(Resource, other_id).recording_key
    now = time.time()
    with db.begin():
        urls = playback.resource_playback(db, scope("school", 101), resource_id, SIGNER, now=now)
    assert check(urls["hls_url"], now) == (key, "index.m3u8", True)
    assert check(urls["mp4_url"], now) == (key, "program.mp4", True)
    assert check(urls["courseware_url"], now) == (key, "courseware.mp4", True)
    assert datetime.fromisoformat(urls["expires_at"]).timestamp() == int(now) + 600
    [clip_url] = urls["clips"]
    assert clip_url["id"] == clip["id"] and clip_url["title"] == "分式方程"
    assert urlsplit(clip_url["url"]).query == "start=125.5&end=380"
    assert check(clip_url["url"], now) == (key, "program.mp4", True)
    # Not another recording, not another cut, not after expiry, not with another secret.
    assert check(urls["mp4_url"], now, key=other_key)[2] is False
    assert check(clip_url["url"].replace("end=380", "end=2400"), now)[2] is False
    assert check(urls["hls_url"], now + 601)[2] is False
    wrong = playback.Signer("another-secret", 600, SIGNER.base_url)
    with db.begin():
        forged = playback.resource_playback(db, scope("school", 101), resource_id, wrong, now=now)
    assert check(forged["mp4_url"], now)[2] is False


def test_playback_without_mp4_or_secret_or_scope(db):
    resource_id = add_recording(db, 102, files={"hls": "index.m3u8"})
    with db.begin():
        urls = playback.resource_playback(db, scope("district", EAST), resource_id,
                                          playback.Signer(SECRET, 60), now=1_900_000_000)
    assert urls["mp4_url"] is None and urls["courseware_url"] is None
    assert urls["hls_url"].startswith("/media/")  # no MEDIA_PUBLIC_URL: a path on the API's own host
    with pytest.raises(PlaybackNotConfigured) as unset, db.begin():
        playback.resource_playback(db, scope("school", 102), resource_id, None)
    assert "PLAYBACK_SECRET" in unset.value.detail and unset.value.status == 503
    with pytest.raises(NotFound), db.begin():
        playback.resource_playback(db, scope("school", 101), resource_id, SIGNER)


def test_patrol_lists_live_recordings_in_scope_with_a_signed_live_playlist(db):
    bodies = {school: recording_body(school) for school in (101, 103, 201)}
    with db.begin():
        for school, body in bodies.items():
            catalog.apply_relay_event(db, "recording.started", body | {"ended_at": None},
                                      OTHER_BUREAU if school == 201 else BUREAU)
        ended = recording_body(102)
        catalog.apply_relay_event(db, "recording.started", ended | {"ended_at": None}, BUREAU)
        catalog.apply_relay_event(db, "recording.ended", ended, BUREAU)
    now = time.time()

    def sessions(who) -> dict[int, dict]:
        with db.begin():
            return {item["session_id"]: item for item in playback.patrol_sessions(db, who, SIGNER, now)["items"]}

    bureau = sessions(scope("bureau", BUREAU, access="read"))
    assert set(bureau) == {bodies[101]["session_id"], bodies[103]["session_id"]}
    assert set(sessions(scope("district", EAST))) == {bodies[101]["session_id"]}
    assert set(sessions(scope("school", 103))) == {bodies[103]["session_id"]}
    item = bureau[bodies[101]["session_id"]]
    assert item["recording_key"] == bodies[101]["key"] and item["school_id"] == 101
    assert check(item["live_url"], now) == (bodies[101]["key"], "index.m3u8", True)


def test_retention_deletes_expired_unkept_recordings_files_and_clips(db, tmp_path):
    storage = FilesystemStorage(tmp_path)
    now = datetime(2027, 6, 1, tzinfo=UTC)
    old = now - timedelta(days=100)
    expired_id = add_recording(db, 101, started_at=old)
    kept_id = add_recording(db, 101, started_at=old)
    recent_id = add_recording(db, 101, started_at=now - timedelta(days=10))
    other_bureau_id = add_recording(db, 201, started_at=old)
    with db.begin():
        library.update_resource(db, scope("school", 101), kept_id, {"kept": True})
        library.add_clip(db, scope("school", 101), expired_id, {"title": "要点", "start_seconds": 1, "end_seconds": 9})
        keys = {rid: db.get(Resource, rid).recording_key for rid in (expired_id, kept_id, recent_id, other_bureau_id)}
    for key in keys.values():
        (tmp_path / key).mkdir()
        (tmp_path / key / "program.mp4").write_bytes(b"\0" * 64)
    with db.begin():  # bureau 5 keeps 30 days; bureau 6 has no setting (the default: 365)
        assert retention.get_retention(db, scope("bureau", BUREAU), 365) == {
            "bureau_id": BUREAU, "days": 365, "default": True}
        assert retention.set_retention(db, scope("bureau", BUREAU), {"days": 30}, 365) == {
            "bureau_id": BUREAU, "days": 30, "default": False}
    with db.begin():
        deleted = retention.delete_expired(db, storage.delete, 365, now)
    assert deleted == [keys[expired_id]]
    assert not (tmp_path / keys[expired_id]).exists()
    assert all((tmp_path / keys[rid]).exists() for rid in (kept_id, recent_id, other_bureau_id))
    with db.begin():
        row = db.get(Resource, expired_id)
        assert row.deleted_at is not None
        assert all(clip.deleted_at is not None for clip in db.scalars(select(Clip).where(Clip.resource_id == row.id)))
        assert retention.delete_expired(db, storage.delete, 365, now) == []  # nothing left to do
    with pytest.raises(NotFound), db.begin():
        library.get_resource(db, scope("bureau", BUREAU), expired_id)
    ids = {item["id"] for item in library.search(db, scope("bureau", BUREAU), {"limit": 200})["items"]}
    db.rollback()
    assert expired_id not in ids and {kept_id, recent_id} <= ids


def test_only_a_bureau_write_token_sets_retention_within_bounds(db):
    for who in (scope("district", EAST), scope("school", 101)):
        with pytest.raises(Forbidden), db.begin():
            retention.set_retention(db, who, {"days": 30}, 365)
    with pytest.raises(Forbidden), db.begin():
        retention.set_retention(db, scope("bureau", BUREAU, access="read"), {"days": 30}, 365)
    for bad in ({"days": 0}, {"days": 3651}, {"days": "30"}, {}):
        with pytest.raises(InvalidInput), db.begin():
            retention.set_retention(db, scope("bureau", BUREAU), bad, 365)


def test_storage_refuses_keys_that_are_not_recording_keys(tmp_path):
    storage = FilesystemStorage(tmp_path / "root")
    (tmp_path / "outside").mkdir()
    for key in ("../outside", "rec/42", "", "REC-1"):
        with pytest.raises(ValueError):
            storage.delete(key)
    assert (tmp_path / "outside").exists()
    assert storage.delete("rec-404") is False
