"""The hot tier's image digests: each file hashed in parts, the parts on several cores, and any
changed byte found, in any part; entries written before part digests still verify."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash
from jusnap.errors import RestoreFailed
from jusnap.store import hot
from jusnap.store.hot import HotEntry, HotTier, digest_files

PART = 1 << 16


def _entry(tmp_path: Path, files: dict[str, bytes]) -> HotEntry:
    img = tmp_path / "e" / hot.IMAGES
    img.mkdir(parents=True)
    for name, data in files.items():
        (img / name).write_bytes(data)
    return HotEntry("01JC7ZZZZZZZZZZZZZZZZZZZZZ", tmp_path / "e", {})


def _files() -> dict[str, bytes]:
    return {"pages-1.img": os.urandom(3 * PART + 123), "core-1.img": b"core", "empty.img": b""}


def test_each_part_is_the_xxh3_of_its_bytes(tmp_path: Path) -> None:
    files = _files()
    entry = _entry(tmp_path, files)
    got = digest_files(entry.images, PART)
    assert set(got) == set(files)
    pages = files["pages-1.img"]
    assert got["pages-1.img"] == [
        xxhash.xxh3_128_hexdigest(pages[i : i + PART]) for i in range(0, len(pages), PART)
    ]
    assert got["core-1.img"] == [xxhash.xxh3_128_hexdigest(b"core")]
    assert got["empty.img"] == [xxhash.xxh3_128_hexdigest(b"")]


@pytest.mark.parametrize("offset", [0, PART - 1, 2 * PART + 5, 3 * PART + 122])
def test_a_changed_byte_in_any_part_fails_verification(tmp_path: Path, offset: int) -> None:
    entry = _entry(tmp_path, _files())
    entry.meta.update(xxh3=digest_files(entry.images, PART), xxh3_part=PART)
    tiers = HotTier(tmp_path)
    tiers.verify(entry)  # as written: fine
    path = entry.images / "pages-1.img"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RestoreFailed, match=r"pages-1\.img fails its checksum"):
        tiers.verify(entry)


def test_a_file_added_or_grown_fails_verification(tmp_path: Path) -> None:
    entry = _entry(tmp_path, _files())
    entry.meta.update(xxh3=digest_files(entry.images, PART), xxh3_part=PART)
    with (entry.images / "core-1.img").open("ab") as f:
        f.write(b"x")
    with pytest.raises(RestoreFailed, match=r"core-1\.img fails its checksum"):
        HotTier(tmp_path).verify(entry)
    (entry.images / "creds-1.img").write_bytes(b"")
    with pytest.raises(RestoreFailed, match="its hot images changed"):
        HotTier(tmp_path).verify(entry)


def test_an_entry_from_before_part_digests_still_verifies(tmp_path: Path) -> None:
    files = _files()
    entry = _entry(tmp_path, files)
    entry.meta["xxh3"] = {n: xxhash.xxh3_128_hexdigest(d) for n, d in files.items()}
    HotTier(tmp_path).verify(entry)
    (entry.images / "core-1.img").write_bytes(b"CORE")
    with pytest.raises(RestoreFailed, match=r"core-1\.img fails its checksum"):
        HotTier(tmp_path).verify(entry)
