"""The photo corpus the shipped default model is trained on: photographs any machine can get from packages.

Sources: `skimage.data` (scikit-image) and the Debian (bookworm) packages in PACKAGES: the wallpapers of
plasma-workspace-wallpapers, and photographs from gcompris-qt-data (inside its Qt .rcc archives), kphotoalbum,
krank, palapeli-data, forensics-samples-files, libjs-jquery-backstretch, opencv-doc and darknet. Every package is
looked up under one ROOT folder: `/` where they are installed, or a folder they were unpacked into with
`apt-get download PKG... && for f in *.deb; do dpkg -x "$f" ROOT; done` (no installing, no root rights).
Ten photos are held out for evaluation and never trained on. Debian's mate-backgrounds (its "nature" folder is the
validation set) is never a source.

OUT/SOURCES.md lists every photo: its file, package, path in the package and licence (as the package's copyright
file states it), and the count per package.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from flowsr.core import images
from flowsr.core.atomic import atomic_file

from .data import DataError
from .rcc import read_rcc

WALLPAPERS = "usr/share/wallpapers"
HOLDOUT_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "camera")
HOLDOUT_WALLPAPERS = ("EveningGlow", "Path", "ColorfulCups", "FallenLeaf", "Kite")
TRAIN_SKIMAGE = (
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "moon",
    "coins",
    "brick",
    "grass",
    "gravel",
    "clock",
    "colorwheel",
)  # page and text, the first corpus's other two, are under MIN_SIDE a side
HOLDOUT_SIZE = 512  # held-out photos: longer side shrunk to 1024, then a centred crop of at most 512 x 512
# Training photos are stored with their longer side at most this (area filter), what the trainers' default
# --max-side shrinks them to anyway: every stage then decodes megapixels, not the wallpapers' 20.
TRAIN_MAX_SIDE = 1600
# The trainers crop 256 x 256 from every photo: a training photo whose shorter side is below this is left out.
MIN_SIDE = 256
# gcompris ships its photos as lossy WebP, sharpened upstream: shrinking them by area to this share of their size
# averages the compression artifacts and the sharpening halos away.
GCOMPRIS_SCALE = 0.75
NO_COPYRIGHT = "see the package's copyright file"


@dataclass(frozen=True)
class Photo:
    """One photo of the corpus, decoded only when it is written."""

    name: str  # the PNG's stem under OUT/train or OUT/holdout: its source first
    package: str  # the Debian package (or the Python package) it comes from
    path: str  # where in the package: a file's path, ARCHIVE.rcc:MEMBER, or skimage.data.NAME()
    load: Callable[[], np.ndarray]  # upright RGB at full size
    scale: float = 1.0  # shrunk by area to this share of its size first
    upstream: str = ""  # its path in the package's source tree: what the copyright file's Files: patterns match
    credit: str = ""  # author, licence and origin where the upstream project records them per photo


@dataclass(frozen=True)
class Package:
    """A Debian package the corpus takes photos from."""

    name: str
    needs: tuple[str, ...]  # globs under ROOT that must each match a file: the sign that it is there
    photos: Callable[[Path], list[Photo]]  # its training photos, found under ROOT
    # What a copyright file that is not machine-readable (DEP-5) says about the photos, in a few words.
    freeform_licence: str = ""


@dataclass(frozen=True)
class Folder:
    """Photos that are plain files in one folder of a package."""

    package: str
    prefix: str  # of the PNGs' names
    folder: str  # under ROOT
    patterns: tuple[str, ...]  # file names or globs in the folder, matched case-sensitively
    upstream: str  # the folder in the package's source tree
    skip: tuple[str, ...] = ()
    at_most: int = 0  # when more match: this many, evenly spread over the sorted names (0: all)
    turns: dict[str, int] = field(default_factory=dict)  # quarter turns clockwise, for photos stored rotated

    def needs(self) -> tuple[str, ...]:
        return tuple(f"{self.folder}/{pattern}" for pattern in self.patterns)

    def photos(self, root: Path) -> list[Photo]:
        folder = root / self.folder
        names = sorted(
            {p.name for pattern in self.patterns for p in folder.glob(pattern) if p.is_file()} - set(self.skip)
        )
        if self.at_most and len(names) > self.at_most:
            names = [names[i * len(names) // self.at_most] for i in range(self.at_most)]
        return [
            Photo(
                f"{self.prefix}-{Path(name).stem}",
                self.package,
                f"/{self.folder}/{name}",
                partial(_read, folder / name, self.turns.get(name, 0)),
                upstream=f"{self.upstream}/{name}",
            )
            for name in names
        ]


GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc"
GCOMPRIS = (  # (activity, name prefix, folder in the activity's resource/ folder, photos in that folder)
    ("erase", "erase", "", "*.webp"),
    ("clickgame", "clickgame", "", "sea*.webp"),
    ("explore_monuments", "monuments", "", "*/*.webp"),
    ("explore_world_animals", "world-animals", "animals", "*.webp"),
    ("explore_farm_animals", "farm-animals", "animals", "*.webp"),
    ("explore_world_music", "world-music", "music", "*.webp"),
)
FOLDERS = (
    Folder(
        "kphotoalbum",
        "kphotoalbum",
        "usr/share/kphotoalbum/demo",
        ("*.jpg",),
        "demo",
        turns={"grand_canyon_1.jpg": 2, "wayne.jpg": 1},  # stored rotated, without an EXIF orientation
    ),
    # Underwater scenes all: a dozen are plenty. menu-scores1 repeats bonus-01.
    Folder(
        "krank",
        "krank",
        "usr/share/games/krank/levels/unera-backgrounds",
        ("*.jpg",),
        "levels/unera-backgrounds",
        skip=("menu-scores1.jpg",),
        at_most=12,
    ),
    Folder("palapeli-data", "palapeli", "usr/share/palapeli/collection", ("*.jpg",), "puzzles"),
    Folder(
        "forensics-samples-files",
        "forensics",
        "usr/share/forensics-samples/original-files/pic1",
        ("IMG*",),
        "original-files/pic1",
    ),
    Folder(
        "forensics-samples-files",
        "forensics",
        "usr/share/forensics-samples/original-files/pic2",
        ("IMG*",),
        "original-files/pic2",
    ),
    Folder(
        "libjs-jquery-backstretch",
        "backstretch",
        "usr/share/doc/libjs-jquery-backstretch/examples",
        ("sample1_1920.jpg", "sample2_1920.jpg", "pot-holder.jpg", "coffee.jpg", "dome.jpg"),
        "examples",
    ),
    Folder(
        "opencv-doc",
        "opencv",
        "usr/share/doc/opencv-doc/examples/text",
        tuple(f"scenetext0{i}.jpg" for i in range(1, 7)),
        "contrib/modules/text/samples",
    ),
    Folder(
        "opencv-doc",
        "opencv",
        "usr/share/doc/opencv-doc/examples/data",
        tuple(f"{name}.jpg" for name in ("building", "aloeL", "fruits", "baboon", "squirrel_cls", "butterfly", "home")),
        "samples/data",
    ),
    Folder(
        "darknet",
        "darknet",
        "usr/share/darknet/data",
        tuple(f"{name}.jpg" for name in ("dog", "eagle", "giraffe", "horses", "kite", "person")),
        "data",
    ),
)


def _read(path: Path, turns: int = 0) -> np.ndarray:
    return np.rot90(images.read_image(path).rgb, -turns)


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return images.from_pil(ImageOps.exif_transpose(im)).rgb


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
    return images.gray_to_rgb(image) if image.ndim == 2 else image[..., :3]


def _skimage_photo(name: str, prefix: str = "skimage-") -> Photo:
    return Photo(f"{prefix}{name}", "scikit-image", f"skimage.data.{name}()", lambda: _skimage(name))


def _largest_wallpaper(root: Path, name: str) -> Path:
    files = sorted(sorted((root / WALLPAPERS / name / "contents" / "images").glob("*")), key=lambda p: p.stat().st_size)
    if not files:
        raise DataError(f"{root / WALLPAPERS / name}: no images; unpack Debian's plasma-workspace-wallpapers again")
    return files[-1]


def _wallpaper(root: Path, folder: str, prefix: str = "plasma-") -> Photo:
    path = _largest_wallpaper(root, folder)
    inside = path.relative_to(root / WALLPAPERS).as_posix()
    return Photo(
        f"{prefix}{folder}",
        "plasma-workspace-wallpapers",
        f"/{WALLPAPERS}/{inside}",
        lambda: _read(path),
        upstream=inside,
        credit=_wallpaper_credit(root / WALLPAPERS / folder),
    )


def _wallpaper_credit(folder: Path) -> str:
    """'authors; licence' from a KDE wallpaper's metadata.json (or older metadata.desktop), or '' without them."""
    try:
        plugin = json.loads((folder / "metadata.json").read_text(encoding="utf-8")).get("KPlugin", {})
        authors = [author.get("Name", "") for author in plugin.get("Authors", [])]
        licence = plugin.get("License", "")
    except (OSError, ValueError, AttributeError):
        try:
            text = (folder / "metadata.desktop").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        entries = dict(re.findall(r"^X-KDE-PluginInfo-(Author|License)=(.*)$", text, re.MULTILINE))
        authors, licence = [entries.get("Author", "")], entries.get("License", "")
    return "; ".join(part.strip() for part in (", ".join(a for a in authors if a), licence) if part.strip())


def _wallpapers(root: Path) -> list[Photo]:
    folders = sorted(p.name for p in (root / WALLPAPERS).iterdir() if p.is_dir())
    return [_wallpaper(root, folder) for folder in folders if folder not in HOLDOUT_WALLPAPERS]


def _gcompris(root: Path) -> list[Photo]:
    photos = []
    for activity, prefix, folder, pattern in GCOMPRIS:
        archive = f"/{GCOMPRIS_RCC}/{activity}.rcc"
        members = read_rcc(root / archive[1:])
        base = f"gcompris/src/activities/{activity}/resource/" + (f"{folder}/" if folder else "")
        credits = gcompris_credits(members.get(f"{base}README", b"").decode("utf-8", errors="replace"))
        for member in sorted(members):
            inside = member.removeprefix(base)
            if member.startswith(base) and _matches(inside, pattern):
                photos.append(
                    Photo(
                        f"gcompris-{prefix}-{inside.rsplit('.', 1)[0].replace('/', '-')}",
                        "gcompris-qt-data",
                        f"{archive}:{member}",
                        lambda data=members[member]: _decode(data),
                        scale=GCOMPRIS_SCALE,
                        upstream=member.removeprefix("gcompris/"),
                        credit=credits.get(inside, ""),
                    )
                )
    return photos


def _matches(path: str, pattern: str) -> bool:
    """`fnmatch` that keeps `*` within one folder level."""
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def gcompris_credits(readme: str) -> dict[str, str]:
    """{file: "author; licence; source"} from a gcompris resource folder's README (stanzas of `Key: value`
    lines, `Files:` followed by names on its line or the lines after it)."""
    credits = {}
    for stanza in re.split(r"\n\s*\n", readme):
        fields: dict[str, str] = {}
        files: list[str] = []
        key = ""
        for line in stanza.splitlines():
            found = re.match(r"([A-Za-z]+):\s*(.*)$", line.strip())
            if found:
                key, value = found[1].lower(), found[2].strip()
                if key == "files":
                    files += value.split()
                else:
                    fields[key] = value
            elif key == "files":
                files += line.split()
        credit = "; ".join(fields[k] for k in ("copyright", "license", "source") if fields.get(k))
        credits.update(dict.fromkeys(files, credit))
    return credits


PACKAGES = (
    Package(
        "plasma-workspace-wallpapers",
        tuple(f"{WALLPAPERS}/{name}/contents/images/*" for name in HOLDOUT_WALLPAPERS),
        _wallpapers,
    ),
    Package("gcompris-qt-data", tuple(f"{GCOMPRIS_RCC}/{activity}.rcc" for activity, *_ in GCOMPRIS), _gcompris),
)
FREEFORM_LICENCES = {  # what the copyright files that are not machine-readable say about the photos
    "kphotoalbum": "GPL-2+ (free-form copyright file: the package's licence; it names no other for the demo photos)",
    "krank": "Public Domain (free-form copyright file: its images, by Slava Anishenko)",
}


def _folders_photos(package: str, root: Path) -> list[Photo]:
    return [photo for folder in FOLDERS if folder.package == package for photo in folder.photos(root)]


PACKAGES += tuple(
    Package(
        name,
        sum((folder.needs() for folder in FOLDERS if folder.package == name), ()),
        partial(_folders_photos, name),
        FREEFORM_LICENCES.get(name, ""),
    )
    for name in dict.fromkeys(folder.package for folder in FOLDERS)
)


def check_packages(root: str | Path) -> None:
    """DataError, in one line that names the missing Debian packages and how to get them, unless all are under ROOT."""
    root = Path(root)
    missing = {}
    for package in PACKAGES:
        absent = [need for need in package.needs if not any(p.is_file() for p in root.glob(need))]
        if absent:
            missing.setdefault(package.name, root / absent[0])
    if not missing:
        return
    names = " ".join(missing)
    first = next(iter(missing.values()))
    unpack = f'apt-get download {names} && for f in *.deb; do dpkg -x "$f" {{}}; done'
    if root == Path("/"):
        get = f"`apt-get install {names}`, or `{unpack.format('DIR')}` and --root DIR"
    else:
        get = f"`{unpack.format(root)}`"
    raise DataError(f"missing the Debian package(s) {names} under {root} (no {first}); get them with {get}")


def _train_photos(root: Path) -> list[Photo]:
    photos = [_skimage_photo(name) for name in TRAIN_SKIMAGE]
    for package in PACKAGES:
        photos += package.photos(root)
    return photos


def _holdout_photos(root: Path) -> list[Photo]:
    # Their names stay those of the first corpus: the evaluations name them.
    photos = [_skimage_photo(name, prefix="") for name in HOLDOUT_SKIMAGE]
    return photos + [_wallpaper(root, name, prefix="") for name in HOLDOUT_WALLPAPERS]


def _scaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Shrunk by area to `factor` of its size (as is when that is not smaller)."""
    if factor >= 1:
        return rgb
    height, width = rgb.shape[:2]
    return cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)


def _shrunk(rgb: np.ndarray, max_side: int) -> np.ndarray:
    return _scaled(rgb, max_side / max(rgb.shape[:2]))


def _training_image(photo: Photo) -> np.ndarray:
    return _shrunk(_scaled(np.ascontiguousarray(photo.load()), photo.scale), TRAIN_MAX_SIDE)


def _holdout_crop(rgb: np.ndarray) -> np.ndarray:
    rgb = _shrunk(rgb, 1024)
    # Sides that are multiples of 16 divide by every evaluated scale and by the model stride.
    crop_h, crop_w = (min(HOLDOUT_SIZE, side // 16 * 16) for side in rgb.shape[:2])
    top, left = (rgb.shape[0] - crop_h) // 2, (rgb.shape[1] - crop_w) // 2
    return rgb[top : top + crop_h, left : left + crop_w]


def _check_names(out: Path, train: list[Photo], holdout: list[Photo]) -> None:
    """Distinct names, and no PNG in OUT that this corpus would not write (another corpus's photos, trained on too)."""
    for split, photos in (("train", train), ("holdout", holdout)):
        twice = [name for name, count in Counter(p.name for p in photos).items() if count > 1]
        if twice:
            raise ValueError(f"two {split} photos named {twice[0]}")  # a bug in the source tables
        names = {f"{p.name}.png" for p in photos}
        stale = sorted(p.name for p in (out / split).glob("*.png") if p.name not in names)
        if stale:
            raise DataError(
                f"{out / split}: holds {len(stale)} PNGs this corpus does not write ({', '.join(stale[:3])}...); "
                "write the corpus to a new folder, or remove them"
            )


def write_corpus(out: str | Path, root: str | Path = "/") -> tuple[int, int]:
    """Write OUT/train (whole photos, longer side at most TRAIN_MAX_SIDE, shorter side at least MIN_SIDE),
    OUT/holdout (512 x 512 crops) and OUT/SOURCES.md, from the packages under ROOT; returns the two counts.

    Checks that every package is there, and that OUT holds no other corpus's photos, before it writes anything."""
    out, root = Path(out), Path(root)
    check_packages(root)
    train, holdout = _train_photos(root), _holdout_photos(root)
    _check_names(out, train, holdout)
    kept, left_out = [], []
    for photo in train:
        rgb = _training_image(photo)
        if min(rgb.shape[:2]) < MIN_SIDE:
            left_out.append((photo, rgb.shape))
            continue
        images.write_image(out / "train" / f"{photo.name}.png", images.Picture(np.ascontiguousarray(rgb)))
        kept.append(photo)
    for photo in holdout:
        rgb = _holdout_crop(photo.load())
        images.write_image(out / "holdout" / f"{photo.name}.png", images.Picture(np.ascontiguousarray(rgb)))
    with atomic_file(out / "SOURCES.md") as f:
        f.write(sources_markdown(root, kept, holdout, left_out).encode())
    return len(kept), len(holdout)


# ---- SOURCES.md: where every photo comes from, and its licence ----


def sources_markdown(root: Path, train: list[Photo], holdout: list[Photo], left_out=()) -> str:
    licences = _Licences(root)
    lines = [
        "# Sources of the photo corpus",
        "",
        "Written by `flowsr train photos`. Licence: as the package's /usr/share/doc/PACKAGE/copyright states it for",
        "the photo's path in the package's source tree (the last matching `Files:` stanza of a machine-readable file).",
        "Credit: the author, licence and origin that the upstream project records for the photo, where it does",
        "(gcompris: the README beside the photos; KDE wallpapers: metadata.json). The credit is per photo; the",
        "copyright file's licence may be the whole package's (gcompris' predates its WebP photos).",
        "gcompris photos are stored shrunk by area to 3/4 of their size; training photos have their longer side at",
        f"most {TRAIN_MAX_SIDE} px; held-out photos are the centred {HOLDOUT_SIZE} px crop of the photo shrunk to "
        "1024 px.",
        "",
        "## Photos per package",
        "",
        "| package | version | train | holdout |",
        "|---|---|---|---|",
    ]
    counts = {split: Counter(p.package for p in photos) for split, photos in (("train", train), ("holdout", holdout))}
    for package in dict.fromkeys(p.package for p in [*train, *holdout]):
        row = (package, licences.version(package), counts["train"][package], counts["holdout"][package])
        lines.append("| {} | {} | {} | {} |".format(*row))
    lines += [f"| total | | {len(train)} | {len(holdout)} |", ""]
    for split, photos in (("train", train), ("holdout", holdout)):
        lines += [
            f"## {split}/",
            "",
            "| file | package | path in the package | licence | credit |",
            "|---|---|---|---|---|",
        ]
        for photo in photos:
            cells = (f"{photo.name}.png", photo.package, photo.path, licences.of(photo), photo.credit)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    if left_out:
        lines += [f"## Left out: shorter side under {MIN_SIDE} px after shrinking", ""]
        lines += [f"- {photo.path} ({shape[1]} x {shape[0]})" for photo, shape in left_out]
        lines.append("")
    return "\n".join(lines)


class _Licences:
    """Each photo's licence as its package's copyright file states it, and the packages' versions."""

    def __init__(self, root: Path):
        self.root = root
        self.copyrights: dict[str, list[dict[str, str]] | str] = {}

    def version(self, package: str) -> str:
        if package == "scikit-image":
            from skimage import __version__

            return __version__
        changelog = self.root / "usr/share/doc" / package / "changelog.Debian.gz"
        try:
            with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as f:
                found = re.match(r"\S+ \(([^)]+)\)", f.readline())
        except OSError:
            return "unknown"
        return found[1] if found else "unknown"

    def of(self, photo: Photo) -> str:
        if photo.package == "scikit-image":
            return f"see the docstring of {photo.path.removesuffix('()')}"
        if photo.package not in self.copyrights:
            self.copyrights[photo.package] = self._read(photo.package)
        stanzas = self.copyrights[photo.package]
        if isinstance(stanzas, str):
            return stanzas
        licence = NO_COPYRIGHT
        for stanza in stanzas:  # the last stanza that matches is the one that holds
            if any(_dep5_match(pattern, photo.upstream) for pattern in stanza["files"].split()):
                licence = stanza["license"].splitlines()[0].strip()
        return licence

    def _read(self, package: str) -> list[dict[str, str]] | str:
        """The `Files:` stanzas of a machine-readable (DEP-5) copyright file, else the licence for all its photos."""
        try:
            text = (self.root / "usr/share/doc" / package / "copyright").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return NO_COPYRIGHT
        paragraphs = deb822(text)
        if not paragraphs or "copyright-format" not in paragraphs[0].get("format", ""):
            return next((p.freeform_licence for p in PACKAGES if p.name == package), "") or NO_COPYRIGHT
        return [p for p in paragraphs if "files" in p and "license" in p]


def deb822(text: str) -> list[dict[str, str]]:
    """The paragraphs of a Debian control-style file: {lower-case field: value, continuation lines joined by \\n}."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            key = key.lower()
            current[key] = value
    return paragraphs


def _dep5_match(pattern: str, path: str) -> bool:
    """A DEP-5 `Files:` pattern: `*` matches any run of characters, `/` included, and `?` any one."""
    pattern = pattern.removeprefix("./")
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, path) is not None
