"""Moving a dump's served ports in files.img (ports.py) and the image writer under it.

Pure logic on crafted images (the same rewrite runs on real dumps in
tests/integration/test_fork.py, which also checks the byte-exact round trip there).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from jusnap.criu_images import FILES_MAGIC, Message, check_images, entries, image
from jusnap.errors import ImageRefused
from jusnap.ports import move_ports, plan, rewrite, served_ports

from tests.criu_craft import encode
from tests.criu_craft import image as craft_image
from tests.unit.test_criu_images import WHO, core, creds
from tests.unit.test_criu_images import dump as dump_of

LISTEN, ESTABLISHED, CLOSE = 10, 1, 7


def isk(sid: int, src: int, dst: int, state: int, kind: int = 1) -> bytes:
    """An inet_sk_entry as CRIU writes it (field order of images/sk-inet.proto)."""
    return encode([
        (1, 0, sid), (2, 0, 1000 + sid), (3, 0, 2), (4, 0, kind), (5, 0, 6), (6, 0, state),
        (7, 0, src), (8, 0, dst), (9, 0, 0x802), (10, 0, 128 if state == LISTEN else 0),
        (11, 0, 0x0100007F), (12, 0, 0x0100007F if dst else 0),
        (13, 2, encode([(1, 0, 0), (2, 0, 0)])), (14, 2, encode([(1, 0, 212992)])),
        (20, 2, encode([(1, 0, 1)])),
    ])  # fmt: skip


def file_entry(fid: int, kind: int, sub: bytes | None = None) -> bytes:
    fields = [(1, 0, kind), (2, 0, fid)]
    if sub is not None:
        fields.append((4 if kind == 4 else 3, 2, sub))
    return encode(fields)


def kernel_files() -> bytes:
    """A bare ipykernel's sockets: 5 Jupyter listeners + debugpy's, accepted and self
    connections, a connection to an outside server, a UDP socket, a regular file."""
    sockets = [
        isk(1, 5001, 0, LISTEN), isk(2, 5002, 0, LISTEN), isk(3, 5003, 0, LISTEN),
        isk(4, 5004, 0, LISTEN), isk(5, 5005, 0, LISTEN), isk(6, 41000, 0, LISTEN),
        isk(7, 5001, 50123, ESTABLISHED), isk(8, 50123, 5001, ESTABLISHED),
        isk(9, 50200, 5432, ESTABLISHED), isk(10, 47000, 0, CLOSE, kind=2),
    ]  # fmt: skip
    payloads = [file_entry(1, 1, encode([(1, 0, 1), (3, 2, b"/tmp/x")]))]
    payloads += [file_entry(10 + i, 4, s) for i, s in enumerate(sockets)]
    return craft_image(FILES_MAGIC, payloads)


def ports_of(data: bytes) -> list[tuple[int, int]]:
    out = []
    for entry in entries(data, FILES_MAGIC):
        fe = Message.parse(entry)
        if fe.scalar(1) == 4:
            sk = fe.message(4)
            assert sk is not None
            out.append((sk.scalar(7), sk.scalar(8)))
    return out


def test_reencoding_an_image_gives_back_its_bytes() -> None:
    data = kernel_files()
    again = image(data[:8], [Message.parse(e).encode() for e in entries(data, FILES_MAGIC)])
    assert again == data


def test_fixed64_fixed32_and_packed_fields_survive_the_writer() -> None:
    raw = encode([(1, 1, struct.pack("<Q", 2**63 + 5)), (2, 5, struct.pack("<I", 7)),
                  (3, 2, bytes([1, 2, 3])), (4, 0, 2**64 - 1)])  # fmt: skip
    assert Message.parse(raw).encode() == raw


def test_served_ports_are_listeners_and_bound_udp() -> None:
    assert served_ports(kernel_files()) == {5001, 5002, 5003, 5004, 5005, 41000, 47000}


def test_rewrite_moves_listeners_and_every_socket_on_their_ports() -> None:
    fixed = {5001: 6001, 5002: 6002, 5003: 6003, 5004: 6004, 5005: 6005, 41000: 7000}
    new, changed = rewrite(kernel_files(), fixed)
    assert changed == 8
    assert ports_of(new) == [
        (6001, 0), (6002, 0), (6003, 0), (6004, 0), (6005, 0), (7000, 0),
        (6001, 50123), (50123, 6001), (50200, 5432), (47000, 0),
    ]  # fmt: skip
    # Only the ports changed: mapping back gives the original bytes.
    back, _ = rewrite(new, {v: k for k, v in fixed.items()})
    assert back == kernel_files()


def test_a_rewritten_image_still_passes_the_image_check() -> None:
    new, _ = rewrite(kernel_files(), {5001: 6001, 41000: 7000})
    dump = [(n, new if n == "files.img" else d) for n, d in dump_of(core(creds()))]
    check_images(dump, WHO)


def test_plan_keeps_fixed_ports_and_gives_the_rest_fresh_free_ones() -> None:
    served = {5001, 5002, 41000, 47000}
    moved = plan(served, {5001: 6001, 5002: 6002})
    assert moved[5001] == 6001 and moved[5002] == 6002
    fresh = {moved[41000], moved[47000]}
    assert len(fresh) == 2 and not fresh & (served | {6001, 6002})
    for port in fresh:  # free: a server could bind it now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_move_ports_rewrites_the_staged_file_and_reports_the_map(tmp_path: Path) -> None:
    img = tmp_path / "files.img"
    img.write_bytes(kernel_files())
    img.chmod(0o440)
    moved = move_ports(img, {5001: 6001, 5002: 6002, 5003: 6003, 5004: 6004, 5005: 6005})
    assert set(moved) == {5001, 5002, 5003, 5004, 5005, 41000, 47000}
    assert img.stat().st_mode & 0o777 == 0o440
    assert served_ports(img.read_bytes()) == set(moved.values())
    assert [p.name for p in tmp_path.iterdir()] == ["files.img"]


def test_nothing_to_move_leaves_the_file_alone(tmp_path: Path) -> None:
    img = tmp_path / "files.img"
    img.write_bytes(craft_image(FILES_MAGIC, [file_entry(1, 1, encode([(1, 0, 1)]))]))
    before = img.stat().st_ino
    assert move_ports(img, {}) == {}
    assert img.stat().st_ino == before


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x19\x43\x56\x54", "too short"),
        (struct.pack("<II", 0x54564319, 0x12345678), "bad magic"),
        (kernel_files()[:-3], "truncated"),
        (craft_image(FILES_MAGIC, [encode([(1, 0, 4), (2, 0, 1)])]), "without its socket"),
        (
            craft_image(FILES_MAGIC, [file_entry(1, 4, encode([(1, 0, 1), (7, 0, 70000)]))]),
            "port field 7 is 70000",
        ),
        (
            craft_image(FILES_MAGIC, [file_entry(1, 4, encode([(1, 0, 1), (7, 2, b"x")]))]),
            "not a varint",
        ),
        (craft_image(FILES_MAGIC, [b"\x0f\x01"]), "wire type 7"),
    ],
)
def test_malformed_files_images_are_refused_clearly(data: bytes, why: str) -> None:
    with pytest.raises(ImageRefused, match=f"files.img: malformed.*{why}"):
        served_ports(data)
    with pytest.raises(ImageRefused, match=why):
        rewrite(data, {5001: 6001})


def test_a_bad_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="not a port mapping"):
        rewrite(kernel_files(), {5001: 70000})
