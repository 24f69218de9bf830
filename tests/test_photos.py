"""`flowsr train photos`: the Qt .rcc reader, and the corpus built from a tiny fake package ROOT (no Debian packages
needed): rotations, the shorter-side filter, the one-line error for missing packages, SOURCES.md, determinism."""

import io
import struct
import zlib
from functools import partial

import numpy as np
import pytest
from PIL import Image

from flowsr.runtime.cli import main
from flowsr.training import photos
from flowsr.training.data import DataError
from flowsr.training.rcc import RccError, read_rcc

# ---- a writer of Qt resource archives, the format of Qt's rcc tool ----


def rcc_bytes(files: dict[str, bytes], compressed: frozenset[str] = frozenset(), version: int = 3) -> bytes:
    """A Qt resource archive of `files` ({"folder/name": content}); the names in `compressed` stored with zlib.

    Laid out as rcc does (header, data, names, tree), the entries of each folder's children contiguous."""
    tree: dict = {}
    for path in files:
        *folders, name = path.split("/")
        node = tree
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = path
    data, names, entries = bytearray(), bytearray(), []  # entries: [name, flags, (count, first) | data offset]
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(encoded) // 2, 0) + encoded)  # the hash is unused by readers
        return name_offsets[name]

    entries.append(["", 0x2, None])
    queue = [(0, tree)]
    while queue:
        index, node = queue.pop(0)
        entries[index][2] = (len(node), len(entries))
        for name, child in node.items():
            if isinstance(child, dict):
                queue.append((len(entries), child))
                entries.append([name, 0x2, None])
            else:
                content = files[child]
                flags = 0
                if child in compressed:
                    content, flags = struct.pack(">I", len(content)) + zlib.compress(content), 0x1
                entries.append([name, flags, len(data)])
                data.extend(struct.pack(">I", len(content)) + content)
    for name, _, _ in entries[1:]:
        name_offset(name)
    data_offset = 24 if version >= 3 else 20
    names_offset = data_offset + len(data)
    tree_offset = names_offset + len(names)
    table = bytearray()
    for name, flags, payload in entries:
        table += struct.pack(">IH", name_offset(name) if name else 0, flags)
        table += struct.pack(">II", *payload) if flags & 0x2 else struct.pack(">HHI", 0, 0, payload)
        if version >= 2:
            table += struct.pack(">Q", 0)  # modification time
    header = b"qres" + struct.pack(">IIII", version, tree_offset, data_offset, names_offset)
    header += struct.pack(">I", 0) if version >= 3 else b""
    return header + bytes(data) + bytes(names) + bytes(table)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_reads_stored_and_zlib_entries_in_nested_folders(version):
    files = {
        "gcompris/src/a/resource/one.webp": b"first file",
        "gcompris/src/a/resource/sub/two.txt": b"second \x00 file" * 50,
        "gcompris/src/a/top.qml": "\u00e9t\u00e9".encode(),
        "root.bin": b"",
    }
    blob = rcc_bytes(files, compressed=frozenset({"gcompris/src/a/resource/sub/two.txt", "root.bin"}), version=version)
    assert read_rcc(blob) == files


def test_rcc_reader_reports_bad_files_in_one_line(tmp_path):
    blob = rcc_bytes({"a/b.txt": b"content" * 10})
    for bad in (b"PK\x03\x04" + blob[4:], blob[:-9], struct.pack(">4sI", b"qres", 9) + blob[8:]):
        (tmp_path / "bad.rcc").write_bytes(bad)
        with pytest.raises(RccError) as caught:
            read_rcc(tmp_path / "bad.rcc")
        assert "bad.rcc" in str(caught.value) and "\n" not in str(caught.value)


# ---- a fake ROOT: a wallpaper package, a gcompris archive and a folder of JPEGs ----

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: someone
License: GPL-3+

# a comment line
Files: src/activities/erase/resource/*
Copyright: photographers
License: CC-BY-SA-4.0
 The licence text, indented.

License: GPL-3+
 Its text.
"""
README = """Copyright: A. Photographer
License: CC0-1.0
Source: https://example.org/fox
Files: fox.webp

Copyright: Nobody
License: CC-BY-SA 4.0
Files:
tiny.webp
"""


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth picture (fast to encode): top half reddish, bottom half bluish."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2, :, 0] = 200
    rgb[height // 2 :, :, 2] = 200
    return rgb + rng.integers(0, 20, 3, dtype=np.uint8)


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return buffer.getvalue()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """ROOT with the fake packages, and the module's tables pointed at them; returns ROOT."""
    root = tmp_path / "root"
    wallpapers = root / photos.WALLPAPERS
    for folder, size in (("Hold", (640, 480)), ("Wide", (1800, 400))):
        (wallpapers / folder / "contents/images").mkdir(parents=True)
        (wallpapers / folder / "contents/images/small.png").write_bytes(encoded(picture(64, 48), "PNG"))
        (wallpapers / folder / "contents/images/large.png").write_bytes(encoded(picture(*size), "PNG"))
    (wallpapers / "Wide/metadata.desktop").write_text("[Desktop Entry]\nX-KDE-PluginInfo-Author=Ann\n")
    resource = "gcompris/src/activities/erase/resource"
    archive = rcc_bytes(
        {
            f"{resource}/fox.webp": encoded(picture(400, 360, 1), "WEBP"),  # 300 x 270 at 3/4: kept
            f"{resource}/tiny.webp": encoded(picture(400, 300, 2), "WEBP"),  # 300 x 225 at 3/4: left out
            f"{resource}/icon.svg": b"<svg/>",
            f"{resource}/README": README.encode(),
        },
        compressed=frozenset({f"{resource}/README", f"{resource}/tiny.webp"}),
    )
    (root / photos.GCOMPRIS_RCC).mkdir(parents=True)
    (root / photos.GCOMPRIS_RCC / "erase.rcc").write_bytes(archive)
    (root / "usr/share/doc/gcompris-qt-data").mkdir(parents=True)
    (root / "usr/share/doc/gcompris-qt-data/copyright").write_text(DEP5)
    demo = root / "usr/share/kphotoalbum/demo"
    demo.mkdir(parents=True)
    (demo / "upright.jpg").write_bytes(encoded(picture(320, 300, 3), "JPEG"))
    (demo / "sideways.jpg").write_bytes(encoded(np.rot90(picture(300, 320, 4)), "JPEG"))  # needs a turn clockwise
    (demo / "narrow.jpg").write_bytes(encoded(picture(400, 250, 5), "JPEG"))  # shorter side 250: left out

    turns = {"sideways.jpg": 1}
    folder = photos.Folder("kphotoalbum", "kphotoalbum", "usr/share/kphotoalbum/demo", ("*.jpg",), "demo", turns=turns)
    monkeypatch.setattr(photos, "TRAIN_SKIMAGE", ())
    monkeypatch.setattr(photos, "HOLDOUT_SKIMAGE", ())
    monkeypatch.setattr(photos, "HOLDOUT_WALLPAPERS", ("Hold",))
    monkeypatch.setattr(photos, "GCOMPRIS", (("erase", "erase", "", "*.webp"),))
    monkeypatch.setattr(photos, "FOLDERS", (folder,))
    monkeypatch.setattr(
        photos,
        "PACKAGES",
        (
            photos.Package(
                "plasma-workspace-wallpapers", (f"{photos.WALLPAPERS}/Hold/contents/images/*",), photos._wallpapers
            ),
            photos.Package("gcompris-qt-data", (f"{photos.GCOMPRIS_RCC}/erase.rcc",), photos._gcompris),
            photos.Package("kphotoalbum", folder.needs(), partial(photos._folders_photos, "kphotoalbum")),
        ),
    )
    return root


def test_corpus_from_a_fake_root(fake, tmp_path):
    assert photos.write_corpus(tmp_path / "out", root=fake) == (4, 1)
    train = {p.name: Image.open(p) for p in (tmp_path / "out/train").iterdir()}
    assert sorted(train) == [
        "gcompris-erase-fox.png",
        "kphotoalbum-sideways.png",
        "kphotoalbum-upright.png",
        "plasma-Wide.png",
    ]
    assert train["gcompris-erase-fox.png"].size == (300, 270)  # shrunk to 3/4
    assert train["plasma-Wide.png"].size == (1600, 356)  # the largest file, longer side at most TRAIN_MAX_SIDE
    upright = np.asarray(train["kphotoalbum-sideways.png"])
    assert upright.shape == (320, 300, 3)
    assert upright[:100, :, 0].mean() > 150 > upright[:100, :, 2].mean()  # red on top again
    assert upright[-100:, :, 2].mean() > 150 > upright[-100:, :, 0].mean()
    assert Image.open(tmp_path / "out/holdout/Hold.png").size == (512, 480)  # the first corpus's name and crop

    sources = (tmp_path / "out/SOURCES.md").read_text()
    fox = next(line for line in sources.splitlines() if line.startswith("| gcompris-erase-fox.png"))
    assert f"/{photos.GCOMPRIS_RCC}/erase.rcc:gcompris/src/activities/erase/resource/fox.webp" in fox
    assert "| CC-BY-SA-4.0 |" in fox  # the last matching Files: stanza
    assert "A. Photographer; CC0-1.0; https://example.org/fox" in fox  # the README's credit
    assert "| Ann |" in next(line for line in sources.splitlines() if line.startswith("| plasma-Wide.png"))
    assert photos.NO_COPYRIGHT in next(line for line in sources.splitlines() if "kphotoalbum-upright" in line)
    assert "| gcompris-qt-data | unknown | 1 | 0 |" in sources and "| total | | 4 | 1 |" in sources
    assert "erase/resource/tiny.webp (300 x 225)" in sources and "narrow.jpg (400 x 250)" in sources


def test_corpus_is_byte_identical_run_to_run(fake, tmp_path):
    for out in ("a", "b"):
        photos.write_corpus(tmp_path / out, root=fake)
    written = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in written)


def test_missing_package_is_one_line_naming_it_and_nothing_is_written(fake, tmp_path, capsys):
    (fake / photos.GCOMPRIS_RCC / "erase.rcc").unlink()
    out = tmp_path / "out"
    assert main(["train", "photos", "-o", out, "--root", fake]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gcompris-qt-data" in err and "kphotoalbum" not in err
    assert f'apt-get download gcompris-qt-data && for f in *.deb; do dpkg -x "$f" {fake}; done' in err
    assert not out.exists()


def test_another_corpus_in_out_is_refused_before_writing(fake, tmp_path):
    (tmp_path / "out/train").mkdir(parents=True)
    (tmp_path / "out/train/brick.png").write_bytes(b"")
    with pytest.raises(DataError, match="brick.png"):
        photos.write_corpus(tmp_path / "out", root=fake)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == [
        "train",
        "train/brick.png",
    ]


def test_gcompris_readme_credits():
    credits = photos.gcompris_credits(README)
    assert credits == {
        "fox.webp": "A. Photographer; CC0-1.0; https://example.org/fox",
        "tiny.webp": "Nobody; CC-BY-SA 4.0",
    }


def test_the_validation_set_is_never_a_source():
    assert not [p.name for p in photos.PACKAGES if "mate-backgrounds" in p.name]
    assert not [need for p in photos.PACKAGES for need in p.needs if "mate-backgrounds" in need or "nature" in need]
