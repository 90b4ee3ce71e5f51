"""`recording.available` bodies that would have made a resource no one can play or delete (issue 16's checks).

Before these were refused, a key with a trailing newline passed the `$` of the key pattern (the storage's
`fullmatch` then refused it: every retention run failed on that resource, oldest first, and stopped there),
and a file name with a path or a space was stored and made every playback of the resource a 500 (the URL
signer refuses it). Both are now refused by name at the door, so the event is dead-lettered with the field.
"""

from __future__ import annotations

import os

import pytest

from services.common import playback_urls
from services.common.errors import InvalidInput
from services.common.storage import BadKey, FilesystemStorage
from services.resources import catalog, playback

from .conftest import BUREAU, recording_body, scope


@pytest.mark.parametrize("key", ["rec-1\n", "rec-1\r\n", "rec-1/../x", "REC-1", "rec-" + "1" * 61])
def test_a_key_that_is_not_a_plain_recording_key_is_refused(db, key):
    with pytest.raises(InvalidInput) as refused, db.begin():
        catalog.recording_available(db, {**recording_body(101), "key": key}, BUREAU)
    assert "key" in refused.value.fields
    with pytest.raises(ValueError):
        playback_urls.signature(key, 2_000_000_000, "secret")


@pytest.mark.parametrize("name", ["../../etc/passwd", "a b.mp4", ".hidden.mp4", "program.mp4\n", "dir/x.mp4", ""])
def test_a_file_that_is_not_a_plain_name_in_the_folder_is_refused(db, name):
    body = recording_body(101)
    with pytest.raises(InvalidInput) as refused, db.begin():
        catalog.recording_available(db, {**body, "files": {**body["files"], "program_mp4": name}}, BUREAU)
    assert "files" in refused.value.fields


def test_a_resource_from_a_plain_body_plays_and_its_key_is_one_storage_takes(db, tmp_path):
    with db.begin():
        resource = catalog.recording_available(db, recording_body(101), BUREAU)
    storage = FilesystemStorage(tmp_path)
    storage.ensure()
    assert storage.folder(resource.recording_key).parent == tmp_path.resolve()
    signer = playback.Signer("secret", 300, "")
    with db.begin():
        urls = playback.resource_playback(db, scope("school", 101), resource.id, signer)
    assert urls["mp4_url"].endswith("/program.mp4")
    with pytest.raises(BadKey):
        storage.folder("rec-1\n")


def test_one_folder_retention_cannot_delete_does_not_stop_retention(db, tmp_path):
    """A link (or a file) where the oldest expired recording's folder should be: that one is left for the next
    run, the others are deleted, nothing outside the root is touched (before: the whole batch failed on every
    run, oldest first, and the disk filled up)."""
    from datetime import UTC, datetime, timedelta

    from services.resources import retention
    from services.resources.models import Resource

    root = tmp_path / "recordings"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    storage = FilesystemStorage(root)
    now = datetime(2027, 6, 1, tzinfo=UTC)
    oldest = catalog_resource(db, now - timedelta(days=500))
    older = catalog_resource(db, now - timedelta(days=400))
    os.symlink(outside, root / oldest)
    (root / older).mkdir()
    (root / older / "program.mp4").write_bytes(b"\0" * 64)
    with db.begin():
        assert retention.delete_expired(db, storage.delete, 365, now) == [older]
    with db.begin():
        states = {row.recording_key: row.deleted_at for row in db.query(Resource).filter(
            Resource.recording_key.in_([oldest, older]))}
    assert states[oldest] is None and states[older] is not None
    assert not (root / older).exists() and (outside / "keep").read_text() == "keep"


def catalog_resource(db, started_at) -> str:
    with db.begin():
        return catalog.recording_available(db, recording_body(101, started_at=started_at), BUREAU).recording_key
