"""Crafting CRIU images the way an attacker would: re-encode a core image with other creds.

Used by the security tests to build the exploit of the 2026-11 appliance (a dumped process
whose image claims capabilities) and its variants (packed fields, a second creds message that
protobuf merges, missing creds, foreign file kinds).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash
from jusnap.criu_images import CORE_MAGIC, FILES_MAGIC, IMG_COMMON_MAGIC, MNTS_MAGIC, entries

Field = tuple[int, int, Any]  # (number, wire type, value)

# The capability sets the 2026-11 exploit wrote: CAP_SYS_PTRACE and friends, 64-bit mask as
# two 32-bit words (CRIU stores each set as repeated uint32).
EXPLOIT_CAPS = (0x00081100, 0x100)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def decode(buf: bytes) -> list[Field]:
    out: list[Field] = []
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            out.append((num, 0, value))
        elif wire == 2:
            size, i = _read_varint(buf, i)
            out.append((num, 2, buf[i : i + size]))
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            out.append((num, wire, buf[i : i + width]))
            i += width
        else:
            raise ValueError(wire)
    return out


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for num, wire, value in fields:
        out += varint(num << 3 | wire)
        if wire == 0:
            out += varint(value)
        elif wire == 2:
            out += varint(len(value)) + value
        else:
            out += value
    return bytes(out)


def image(magic: int, payloads: list[bytes]) -> bytes:
    body = b"".join(struct.pack("<I", len(p)) + p for p in payloads)
    return struct.pack("<II", IMG_COMMON_MAGIC, magic) + body


def _edit_sub(
    fields: list[Field], num: int, edit: Callable[[list[Field]], list[Field]]
) -> list[Field]:
    return [(n, w, encode(edit(decode(v))) if n == num and w == 2 else v) for n, w, v in fields]


def edit_creds(core: bytes, edit: Callable[[list[Field]], list[Field]]) -> bytes:
    """Apply ``edit`` to the creds of every thread of a core image."""
    (entry,) = entries(core, CORE_MAGIC)
    new = encode(_edit_sub(decode(entry), 5, lambda tc: _edit_sub(tc, 10, edit)))
    return image(CORE_MAGIC, [new])


def with_caps(
    words: tuple[int, ...] = EXPLOIT_CAPS, packed: bool = False
) -> Callable[[list[Field]], list[Field]]:
    """Creds with inheritable, permitted, effective and ambient sets = ``words``."""

    def edit(creds: list[Field]) -> list[Field]:
        kept = [f for f in creds if f[0] not in (9, 10, 11, 19)]
        for num in (9, 10, 11, 19):
            if packed:
                kept.append((num, 2, b"".join(varint(w) for w in words)))
            else:
                kept += [(num, 0, w) for w in words]
        return kept

    return edit


def set_field(num: int, value: int) -> Callable[[list[Field]], list[Field]]:
    return lambda creds: [f for f in creds if f[0] != num] + [(num, 0, value)]


def drop_creds(core: bytes) -> bytes:
    (entry,) = entries(core, CORE_MAGIC)
    new = _edit_sub(decode(entry), 5, lambda tc: [f for f in tc if f[0] != 10])
    return image(CORE_MAGIC, [encode(new)])


def second_creds_with_caps(core: bytes) -> bytes:
    """Append another creds message: protobuf merges it, adding capability words."""
    extra = encode([(11, 0, w) for w in EXPLOIT_CAPS] + [(10, 0, w) for w in EXPLOIT_CAPS])
    (entry,) = entries(core, CORE_MAGIC)
    new = _edit_sub(decode(entry), 5, lambda tc: [*tc, (10, 2, extra)])
    return image(CORE_MAGIC, [encode(new)])


def files_image(kinds: list[int]) -> bytes:
    return image(FILES_MAGIC, [encode([(1, 0, k), (2, 0, i + 1)]) for i, k in enumerate(kinds)])


def rewrite_stored(store_dir: Path, name: str, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite a whole-stored image of a snapshot and its manifest entry consistently, as an
    attacker with write access to the store would have to (checksums then match)."""
    path = store_dir / name
    data = edit(path.read_bytes())
    path.write_bytes(data)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["name"] == name:
            f["size"], f["xxh3"] = len(data), xxhash.xxh3_128(data).hexdigest()
    (store_dir / "manifest.json").write_text(json.dumps(manifest))


def rewrite_hot(entry_dir: Path, name: str, edit: Callable[[bytes], bytes]) -> None:
    """The same for a snapshot's hot-tier entry (``store/hot.py``): image and recorded hash."""
    path = entry_dir / "img" / name
    data = edit(path.read_bytes())
    path.chmod(0o640)
    path.write_bytes(data)
    path.chmod(0o440)
    meta = json.loads((entry_dir / "meta.json").read_text())
    meta["xxh3"][name] = xxhash.xxh3_128(data).hexdigest()
    (entry_dir / "meta.json").write_text(json.dumps(meta))


def clear_root_nosuid(mountpoints: bytes) -> bytes:
    """A mountpoints-<n>.img with MS_NOSUID cleared on ``/``: what a kernel user could write
    into its namespaced kernel's dump while it is in flight (docs/fork-design.md, section 5)."""
    out = []
    for entry in entries(mountpoints, MNTS_MAGIC):
        fields = decode(entry)
        if (7, 2, b"/") in fields:
            fields = [(n, w, v & ~0x2 if n == 5 else v) for n, w, v in fields]
        out.append(encode(fields))
    return image(MNTS_MAGIC, out)


def clear_no_new_privs(core: bytes) -> bytes:
    """A core image whose threads lost no_new_privs (creds field 18)."""
    return edit_creds(core, lambda creds: [f for f in creds if f[0] != 18] + [(18, 0, 0)])
