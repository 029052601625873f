"""Training data: the bundled emoji dataset (fetch, verify, select, downsample) and ImageFolder loading.

Two entry points:

* `fetch_emoji(out_dir)` builds the emoji training set: `out_dir/<class>/<unified>.png` (32x32 RGB) plus
  `manifest.json` and `LICENSE.txt`. It downloads one pinned npm tarball, `emoji-datasource-google@16.0.0`
  (Google's Noto Emoji as 64 px PNGs), checks its sha512 against a constant in this file *before* reading
  it, and caches it so reruns are offline. `python -m nitrogen_core data emoji --out DIR` is the CLI.
* `load_image_folder(path)` loads any `root/<class>/<image>` tree fully into memory. Labels are the
  class folders in sorted order. Images must already be square and exactly `image_size`: we never
  resize a user's data behind their back.

The download is isolated in small functions (`_open_url`, `fetch_registry_metadata`, `download_to`,
`ensure_tarball`); everything after it works on a verified tarball on disk, so tests run offline.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import io
import json
import os
import re
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from ..errors import NitroGenInputError

# -- the pinned source ----------------------------------------------------------------------

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
REGISTRY_URL = f"https://registry.npmjs.org/{PACKAGE}/{VERSION}"
TARBALL_NAME = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{TARBALL_NAME}"     # what dist.tarball says today
# dist.integrity of emoji-datasource-google@16.0.0, recorded when we first fetched it (74,344,091 bytes).
# The downloaded (or cached) tarball must hash to this, whatever the registry says today.
EXPECTED_INTEGRITY = (
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
)
# Licences as stated inside the tarball: package.json / LICENSE say MIT (c) 2013 Cal Henderson for the
# package; its README says "Android/Google/Noto images, are available under the Apache License 2.0".
PACKAGE_LICENSE = "MIT"
IMAGE_LICENSE = "Apache-2.0"
IMAGE_SOURCE = "Noto Emoji (Google), https://github.com/googlefonts/noto-emoji"

EMOJI_JSON = "package/emoji.json"
IMAGE_DIR = "package/img/google/64/"
SOURCE_PX = 64
MANIFEST = "manifest.json"
GENERATOR = "nitrogen_core.train.data.fetch_emoji"

TIMEOUT_S = 30.0                        # per socket operation (connect, each read)
MAX_TARBALL_BYTES = 512 * 2**20         # the real one is 71 MiB; refuse anything absurd
MAX_METADATA_BYTES = 4 * 2**20
MAX_MEMBER_BYTES = 2 * 2**20            # a 64 px PNG is <= 10 KB
MAX_JSON_BYTES = 64 * 2**20             # emoji.json is 1.3 MB
_CHUNK = 2**20

_IMAGE_NAME = re.compile(r"[0-9a-f]+(?:-[0-9a-f]+)*\.png")     # e.g. 1f600.png, 1f1fa-1f1f8.png
_UNIFIED = re.compile(r"[0-9A-F]+(?:-[0-9A-F]+)*")               # e.g. 1F600, 1F1FA-1F1F8


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nitrogen"


# -- class rules ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EmojiRule:
    """Which emoji.json entries form one class. Skin-tone variants live under `skin_variations` and are
    never top-level entries, so a rule never picks them up."""

    subcategories: tuple[str, ...]
    include: tuple[str, ...] = ()       # if set, only these short_names
    pattern: str | None = None          # if set, short_name must fully match this regex
    exclude: tuple[str, ...] = ()       # short_names to drop
    limit: int | None = None            # keep at most this many, evenly spaced in emoji order
    note: str = ""                      # why the class looks like this (copied into manifest.json)

    def matches(self, entry: Mapping[str, Any]) -> bool:
        name = entry.get("short_name")
        if entry.get("subcategory") not in self.subcategories or not isinstance(name, str):
            return False
        if self.include and name not in self.include:
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, name):
            return False
        return name not in self.exclude

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# Calibration: a 9-group probe (655 images) learned faces, hearts, flags and clocks clearly, fruit and
# vehicles partly, and left mammals and weather as blobs. So every class below is one visual template
# with little variation in silhouette, checked on 32 px contact sheets. Counts are for 16.0.0.
# Labels are the folder names in sorted order, so this dict is kept alphabetical.
# Dropped groups: animal-* (silhouettes too varied: the probe's blobs), sky & weather (moons, clouds,
# umbrellas, fire: no shared template), food-vegetable (varied shapes), alphanum (text, many colours),
# person-*/hand-* (skin-tone bases, complex), face-costume/face-negative (skulls, ghosts, robots: not
# yellow discs), cat-face (only 9), zodiac/religion/transport-sign tiles (13 each, too few alone).
EMOJI_CLASSES: dict[str, EmojiRule] = {
    # 24 analogue clock faces, identical but for the hands: learned clearly in the probe, and the hands are
    # a small detail that forces the gate to keep computing there. Hourglasses, watch, alarm clock,
    # stopwatch, timer and mantelpiece clock are different objects, so the regex keeps clockN/clockN30 only.
    "clock": EmojiRule(("time",), pattern=r"clock\d+",
                       note="clock faces only (clock1..clock1230); other timepieces dropped"),
    # 259 waving rectangles (learned clearly). Exact duplicates after downsampling (fr/mf/cp, no/sj/bv,
    # us/um, au/hm, es/ea, io/dg, sa/sark) are dropped first; then 64 are kept, evenly spaced by country
    # code, so one class does not outweigh the others 10:1 (other classes have 15-30 images).
    "flag": EmojiRule(("country-flag",), limit=64,
                      note="country flags, exact duplicates dropped, 64 kept evenly spaced (of 250 distinct)"),
    # 20 single fruits: compact, colourful, centred. Learned partly in the probe (mixed with vegetables,
    # whose shapes vary much more, so vegetables are left out).
    "fruit": EmojiRule(("food-fruit",), note="all food-fruit"),
    # Heart shapes in many colours (learned clearly). The love letter (an envelope), the heart decoration
    # (a purple square) and the heart exclamation (a heart on a stick) are different silhouettes.
    "heart": EmojiRule(("heart",), exclude=("love_letter", "heart_decoration",
                                            "heavy_heart_exclamation_mark_ornament"),
                       note="heart shapes; envelope, square tile and exclamation dropped"),
    # Blue-grey rounded key tiles with a white glyph: the 13 keycaps plus the 16 arrow tiles in the same
    # style. The five arrow+word tiles (BACK, END, ON!, SOON, TOP) carry text and are dropped.
    "key": EmojiRule(("keycap", "arrow"), exclude=("back", "end", "on", "soon", "top"),
                     note="keycap and arrow tiles; tiles with words dropped"),
    # Yellow discs with a worried/sad/scared expression: same template as `smiley`, different mouth and
    # eyes, so the pair tests whether the class label controls a few-pixel detail. Scream and yawning
    # faces have hands over the face and are dropped.
    "sad": EmojiRule(("face-concerned",), exclude=("scream", "yawning_face"),
                     note="face-concerned without hands over the face"),
    # Big flat circles, squares and diamonds in 9 colours (probe: 'shapes'): flat colour on white, the easy
    # end for the adaptive sampler. Dropped: the framed buttons and the diamond-with-dot (icons, not plain
    # shapes), and the 8 small squares/diamonds/triangles, which are a few pixels on white at 32 px.
    "shape": EmojiRule(("geometric",), exclude=(
        "diamond_shape_with_a_dot_inside", "radio_button", "white_square_button", "black_square_button",
        "black_medium_small_square", "white_medium_small_square", "black_small_square", "white_small_square",
        "small_orange_diamond", "small_blue_diamond", "small_red_triangle", "small_red_triangle_down"),
        note="large and medium plain circles, squares and diamonds; framed buttons and small shapes dropped"),
    # Yellow discs with a happy expression (faces were learned clearly): smiling, affection and tongue
    # faces. Near-duplicates such as grinning/smiley differ only in the eyes; they are kept.
    "smiley": EmojiRule(("face-smiling", "face-affection", "face-tongue"),
                        note="happy yellow faces: face-smiling, face-affection, face-tongue"),
    # Side-view road vehicles: a box on two wheels facing left. transport-ground (50) also holds trains,
    # signs, tracks, a fuel pump and head-on views, which made the probe's vehicle class only partly learned.
    "vehicle": EmojiRule(("transport-ground",), include=(
        "bus", "trolleybus", "minibus", "ambulance", "fire_engine", "police_car", "taxi", "car", "blue_car",
        "pickup_truck", "truck", "articulated_lorry", "tractor", "racing_car", "auto_rickshaw"),
        note="side-view road vehicles only"),
}

# Three well-learned classes for the `tiny` config preset (num_classes=3) and quick smoke runs.
TINY_CLASSES: dict[str, EmojiRule] = {k: EMOJI_CLASSES[k] for k in ("flag", "heart", "smiley")}

CLASS_PRESETS: dict[str, dict[str, EmojiRule]] = {"emoji32": EMOJI_CLASSES, "tiny": TINY_CLASSES}
DEFAULT_PRESET = "emoji32"


def resolve_class_preset(name: str) -> dict[str, EmojiRule]:
    if name not in CLASS_PRESETS:
        raise NitroGenInputError(f"class preset {name!r} is unknown; choose one of {sorted(CLASS_PRESETS)}")
    return CLASS_PRESETS[name]


# -- integrity (W3C Subresource Integrity strings, as npm uses) -------------------------------

_SRI_ALGOS = {"sha512": 64, "sha384": 48, "sha256": 32}     # strongest first


def parse_sri(integrity: str) -> tuple[str, bytes]:
    """`'sha512-<base64>'` -> ('sha512', digest). With several hashes, the strongest one is used."""
    found: dict[str, bytes] = {}
    for token in str(integrity).split():
        algo, sep, b64 = token.partition("-")
        b64 = b64.split("?", 1)[0]                                  # SRI allows '?options' after the hash
        if not sep or algo not in _SRI_ALGOS:
            continue
        try:
            digest = base64.b64decode(b64, validate=True)
        except ValueError:
            continue
        if len(digest) == _SRI_ALGOS[algo]:
            found[algo] = digest
    for algo in _SRI_ALGOS:
        if algo in found:
            return algo, found[algo]
    raise NitroGenInputError(f"integrity {integrity!r} is not a sha256/sha384/sha512 SRI string")


def sri_of(data: bytes, algo: str = "sha512") -> str:
    return f"{algo}-{base64.b64encode(hashlib.new(algo, data).digest()).decode('ascii')}"


def check_integrity(data: bytes, integrity: str, *, what: str = "data") -> str:
    """Raise NitroGenInputError unless `data` hashes to `integrity`. Returns the matching SRI string."""
    algo, expected = parse_sri(integrity)
    actual = hashlib.new(algo, data).digest()
    if actual != expected:
        raise NitroGenInputError(
            f"{what} fails its integrity check: expected {algo}-{base64.b64encode(expected).decode()}, got "
            f"{algo}-{base64.b64encode(actual).decode()}; refusing to use it")
    return f"{algo}-{base64.b64encode(actual).decode()}"


# -- download (the only code that touches the network) -----------------------------------------

def _open_url(url: str, timeout: float, accept: str):
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "nitrogen (python urllib)"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https only, checked by callers


def _network_error(url: str, exc: BaseException, timeout: float) -> NitroGenInputError:
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, TimeoutError) or "timed out" in str(exc):
        reason = f"no answer within {timeout:g} s"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    else:
        reason = str(exc) or type(exc).__name__
    return NitroGenInputError(
        f"could not download {url}: {reason}; check the network (only registry.npmjs.org is needed), or put "
        f"{TARBALL_NAME} into the cache folder (--cache) to work offline")


_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


def fetch_registry_metadata(url: str = REGISTRY_URL, *, timeout: float = TIMEOUT_S) -> tuple[str, str]:
    """Ask the npm registry for one version's (dist.tarball, dist.integrity)."""
    try:
        with _open_url(url, timeout, "application/json") as response:
            body = response.read(MAX_METADATA_BYTES + 1)
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, exc, timeout) from None
    try:
        if len(body) > MAX_METADATA_BYTES:
            raise ValueError("answer too large")
        dist = json.loads(body)["dist"]
        tarball, integrity = dist["tarball"], dist["integrity"]
        if not isinstance(tarball, str) or not isinstance(integrity, str):
            raise TypeError("dist.tarball / dist.integrity are not strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise NitroGenInputError(f"the registry answer from {url} has no usable dist.tarball/dist.integrity "
                                 f"({type(exc).__name__}: {exc})") from None
    return tarball, integrity


def download_to(url: str, out, *, progress: bool = True, timeout: float = TIMEOUT_S,
                max_bytes: int = MAX_TARBALL_BYTES, desc: str | None = None) -> int:
    """Stream `url` into the binary file object `out` with a byte progress bar on stderr. Returns bytes."""
    from tqdm import tqdm

    if not url.startswith("https://"):
        raise NitroGenInputError(f"refusing to download {url!r}: only https:// URLs are allowed")
    received = 0
    try:
        with _open_url(url, timeout, "application/octet-stream") as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise NitroGenInputError(f"{url} is {total:,} bytes; more than the {max_bytes:,} allowed")
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or url.rsplit("/", 1)[-1],
                      file=sys.stderr, disable=None if progress else True, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise NitroGenInputError(f"{url} sent more than the {max_bytes:,} bytes allowed")
                    try:
                        out.write(chunk)
                    except OSError as exc:               # disk full etc.: not a network problem
                        raise NitroGenInputError(f"cannot save the download of {url}: {exc}") from None
                    bar.update(len(chunk))
    except NitroGenInputError:
        raise
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, exc, timeout) from None
    if total is not None and received != total:
        raise NitroGenInputError(f"download of {url} ended after {received:,} of {total:,} bytes; try again")
    return received


def ensure_tarball(cache_dir: str | os.PathLike | None = None, *, progress: bool = True,
                   timeout: float = TIMEOUT_S) -> tuple[Path, bool]:
    """Return (path of the verified, cached tarball, whether it was downloaded now)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NitroGenInputError(f"cannot create the cache folder {str(cache)!r}: {exc.strerror or exc}") from None
    if not cache.is_dir():
        raise NitroGenInputError(f"cache folder {str(cache)!r} is not a directory")
    target = cache / TARBALL_NAME
    if target.is_file():
        try:
            check_integrity(_read_capped(target), EXPECTED_INTEGRITY, what=str(target))
            _log(progress, f"using cached {target}")
            return target, False
        except (NitroGenInputError, OSError) as exc:
            _log(progress, f"ignoring the cached tarball: {exc}")

    tarball_url, integrity = fetch_registry_metadata(REGISTRY_URL, timeout=timeout)
    if integrity != EXPECTED_INTEGRITY:
        raise NitroGenInputError(
            f"the registry now lists integrity {integrity} for {PACKAGE}@{VERSION}, but NitroGen pins "
            f"{EXPECTED_INTEGRITY}; refusing a changed upstream file")
    _log(progress, f"downloading {tarball_url}")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{TARBALL_NAME}.", suffix=".part")
    except OSError as exc:
        raise NitroGenInputError(f"cannot write to the cache folder {str(cache)!r}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            download_to(tarball_url, out, progress=progress, timeout=timeout, desc=TARBALL_NAME)
        # Verified before it enters the cache, and before anything is extracted from it.
        check_integrity(_read_capped(tmp), EXPECTED_INTEGRITY, what=f"the download of {tarball_url}")
        os.replace(tmp, target)
    except OSError as exc:
        raise NitroGenInputError(f"cannot write to the cache folder {str(cache)!r}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target, True


def _read_capped(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_TARBALL_BYTES:
            raise NitroGenInputError(f"{path} is {size:,} bytes; more than the {MAX_TARBALL_BYTES:,} allowed")
        return path.read_bytes()
    except OSError as exc:
        raise NitroGenInputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


# -- reading the archive ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PackageContents:
    emoji: list                 # parsed package/emoji.json
    images: dict                # basename ('1f600.png') -> PNG bytes, from package/img/google/64/
    package_json: dict | None
    license_text: str | None


def read_package(data: bytes, *, what: str = "tarball") -> PackageContents:
    """Read only the members we need from an npm .tgz held in memory, in one streaming pass.

    Nothing is extracted to disk and no archive path is ever used as a file path: only regular files
    named exactly package/emoji.json, package/package.json, package/LICENSE, or
    package/img/google/64/<hex>[-<hex>...].png are read (via extractfile), each with a size cap.
    """
    emoji = package_json = license_text = None
    images: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():                        # no links, devices or directories
                    continue
                if name.startswith(IMAGE_DIR):
                    base = name[len(IMAGE_DIR):]
                    if _IMAGE_NAME.fullmatch(base) and member.size <= MAX_MEMBER_BYTES:
                        images[base] = tar.extractfile(member).read()
                elif name == EMOJI_JSON and member.size <= MAX_JSON_BYTES:
                    emoji = json.loads(tar.extractfile(member).read())
                elif name == "package/package.json" and member.size <= MAX_MEMBER_BYTES:
                    package_json = json.loads(tar.extractfile(member).read())
                elif name == "package/LICENSE" and member.size <= MAX_MEMBER_BYTES:
                    license_text = tar.extractfile(member).read().decode("utf-8", "replace")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # ValueError covers bad JSON
        raise NitroGenInputError(f"{what} is not a readable emoji-datasource package: {exc}") from None
    if not isinstance(emoji, list):
        raise NitroGenInputError(f"{what} has no {EMOJI_JSON} list")
    if not images:
        raise NitroGenInputError(f"{what} has no PNGs under {IMAGE_DIR}")
    return PackageContents(emoji=emoji, images=images, package_json=package_json, license_text=license_text)


# -- selection and rendering ----------------------------------------------------------------------

def select_emoji(entries: list, rules: Mapping[str, EmojiRule], available: set | dict | None = None) -> dict:
    """Class name -> emoji.json entries in emoji order (sort_order). Pure; no images needed.

    An entry is a candidate only if `has_img_google` is true, its `image` and `unified` are well-formed, and
    (when `available` is given) its image is in the archive. Rules must not overlap, every include/exclude
    name must exist in the rule's subcategories (catches typos), and no class may come out empty.
    """
    selected: dict[str, list] = {name: [] for name in rules}
    owner: dict[str, str] = {}
    names_by_sub: dict[str, set] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("subcategory"), str):
            names_by_sub.setdefault(entry["subcategory"], set()).add(entry.get("short_name"))
        image, unified = entry.get("image"), entry.get("unified")
        if not (entry.get("has_img_google") and isinstance(image, str) and _IMAGE_NAME.fullmatch(image)
                and isinstance(unified, str) and _UNIFIED.fullmatch(unified)):
            continue
        if available is not None and image not in available:
            continue
        for name, rule in rules.items():
            if rule.matches(entry):
                if unified in owner:
                    raise NitroGenInputError(f"emoji {unified} ({entry.get('short_name')}) matches both class "
                                             f"{owner[unified]!r} and {name!r}; class rules must not overlap")
                owner[unified] = name
                selected[name].append(entry)
    for name, rule in rules.items():
        known = set().union(*(names_by_sub.get(s, set()) for s in rule.subcategories))
        missing = [n for n in (*rule.include, *rule.exclude) if n not in known]
        if missing:
            raise NitroGenInputError(f"class {name!r} names {missing} which are not in subcategories "
                                     f"{list(rule.subcategories)}")
        if not selected[name]:
            raise NitroGenInputError(f"class {name!r} matches no emoji with a Google image "
                                     f"(subcategories {list(rule.subcategories)})")
        selected[name].sort(key=lambda e: (e.get("sort_order", 0), e["unified"]))
    return selected


def emoji_to_rgb(png: bytes, size: int, *, what: str = "image"):
    """PNG bytes -> RGB PIL image of size x size: alpha composited onto white, then Lanczos-downsampled.

    Compositing first is the same as resampling premultiplied colour, so edges get no dark fringes.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            rgba = im.convert("RGBA")
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not a usable image"
        raise NitroGenInputError(f"{what} is not a readable image: {exc}") from None
    if rgba.width != rgba.height:
        raise NitroGenInputError(f"{what} is {rgba.width}x{rgba.height}; expected a square emoji")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)   # antialiased: the kernel widens when shrinking
    return rgb


def _evenly_spaced(items: list, limit: int | None) -> list:
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[(i * len(items)) // limit] for i in range(limit)]


@dataclasses.dataclass
class ClassImages:
    entries: list               # emoji.json entries kept, in emoji order
    images: list                # matching RGB PIL images
    candidates: int             # entries the rule matched
    duplicates: int             # dropped as pixel-identical to an earlier image (any class)


def render_classes(selected: Mapping[str, list], images: Mapping[str, bytes], rules: Mapping[str, EmojiRule],
                   size: int) -> dict[str, ClassImages]:
    """Render every selected entry, drop exact duplicates after downsampling, then apply each rule's limit."""
    seen: set[bytes] = set()
    out: dict[str, ClassImages] = {}
    for name in sorted(selected):
        kept_entries, kept_images, dups = [], [], 0
        for entry in selected[name]:
            im = emoji_to_rgb(images[entry["image"]], size, what=f"{IMAGE_DIR}{entry['image']}")
            key = hashlib.sha256(im.tobytes()).digest()
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            kept_entries.append(entry)
            kept_images.append(im)
        idx = _evenly_spaced(list(range(len(kept_entries))), rules[name].limit)
        out[name] = ClassImages([kept_entries[i] for i in idx], [kept_images[i] for i in idx],
                                candidates=len(selected[name]), duplicates=dups)
    return out


# -- writing the ImageFolder ------------------------------------------------------------------------

def _check_emoji_size(image_size: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= SOURCE_PX:
        raise NitroGenInputError(f"image_size {image_size!r} must be an integer in 8..{SOURCE_PX}")


def _check_out_dir(out: Path, force: bool) -> None:
    """Fail before any download: refuse a file, or a non-empty folder unless --force and it is ours."""
    if out.exists() and not out.is_dir():
        raise NitroGenInputError(f"output folder {str(out)!r} is an existing file; give a folder path")
    try:
        non_empty = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise NitroGenInputError(f"cannot read the output folder {str(out)!r}: {exc.strerror or exc}") from None
    if non_empty:
        if not force:
            raise NitroGenInputError(f"output folder {str(out)!r} is not empty; pass --force to replace it")
        if not _written_by_us(out):
            # --force deletes the folder, so only ever delete one this function wrote.
            raise NitroGenInputError(
                f"output folder {str(out)!r} is not empty and has no {MANIFEST} from `data emoji`; refusing to "
                f"delete it even with --force; choose a new or empty folder")


def _written_by_us(out: Path) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text("utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def write_emoji_dataset(tarball: str | os.PathLike, out_dir: str | os.PathLike, *, integrity: str,
                        classes: str | Mapping[str, EmojiRule] = DEFAULT_PRESET, force: bool = False,
                        image_size: int = 32, tarball_url: str | None = None) -> dict:
    """Verify `tarball` against `integrity`, then write out_dir/<class>/<unified>.png + manifest.json.

    The folder is built next to out_dir and moved into place at the end, so a failure leaves no half tree.
    Returns the manifest (without per-file lists) as a summary dict.
    """
    if isinstance(classes, str):
        preset_name, rules = classes, resolve_class_preset(classes)
    else:
        preset_name, rules = "custom", dict(classes)
    _check_emoji_size(image_size)
    out = Path(out_dir).expanduser()
    _check_out_dir(out, force)
    tar_path = Path(tarball)
    if not tar_path.is_file():
        raise NitroGenInputError(f"tarball {str(tar_path)!r} does not exist")
    data = _read_capped(tar_path)
    integrity = check_integrity(data, integrity, what=str(tar_path))        # before anything is read from it
    package = read_package(data, what=str(tar_path))

    selected = select_emoji(package.emoji, rules, available=package.images)
    rendered = render_classes(selected, package.images, rules, image_size)

    import PIL

    pkg = package.package_json or {}
    manifest = {
        "generator": GENERATOR,
        "manifest_version": 1,
        "source": {
            "package": pkg.get("name", PACKAGE),
            "version": pkg.get("version", VERSION),
            "integrity": integrity,
            "registry": REGISTRY_URL,
            "tarball": tarball_url,
            "package_license": pkg.get("license", PACKAGE_LICENSE),
            "image_license": IMAGE_LICENSE,
            "image_source": IMAGE_SOURCE,
        },
        "image_size": image_size,
        "image_mode": "RGB",
        "settings": {
            "source_images": f"{IMAGE_DIR}*.png ({SOURCE_PX} px RGBA)",
            "alpha": "composited onto white (255, 255, 255)",
            "resample": "Pillow LANCZOS (antialiased)",
            "dedupe": "pixel-identical images after downsampling dropped; the first in class order is kept",
            "limit": "evenly spaced in emoji order",
            "class_preset": preset_name,
            "pillow": PIL.__version__,
        },
        "total": sum(len(c.entries) for c in rendered.values()),
        "classes": [
            {
                "label": i,
                "name": name,
                "count": len(c.entries),
                "candidates": c.candidates,
                "duplicates_dropped": c.duplicates,
                "rule": rules[name].to_json(),
                "files": [{"file": f"{name}/{e['unified']}.png", "unified": e["unified"],
                           "short_name": e.get("short_name")} for e in c.entries],
            }
            for i, (name, c) in enumerate(sorted(rendered.items()))
        ],
    }

    # Not mkdtemp: that makes the folder 0700, and the final folder should get the user's umask.
    tmp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for name, c in rendered.items():
            (tmp / name).mkdir()
            for entry, im in zip(c.entries, c.images):
                im.save(tmp / name / f"{entry['unified']}.png", format="PNG")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
        (tmp / "LICENSE.txt").write_text(_license_note(package.license_text), "utf-8")
        if out.exists():
            _check_out_dir(out, force)          # re-check right before deleting
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        raise NitroGenInputError(f"cannot write the output folder {str(out)!r}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {k: v for k, v in manifest.items() if k != "classes"}
    summary["out_dir"] = str(out)
    summary["classes"] = {c["name"]: c["count"] for c in manifest["classes"]}
    return summary


def _license_note(package_license: str | None) -> str:
    return (f"Images: {IMAGE_SOURCE}, licensed {IMAGE_LICENSE} "
            f"(https://www.apache.org/licenses/LICENSE-2.0), as distributed in the npm package "
            f"{PACKAGE}@{VERSION}; downsampled and composited onto white by NitroGen.\n\n"
            f"Package data ({PACKAGE}, https://github.com/iamcal/emoji-data), {PACKAGE_LICENSE}:\n\n"
            f"{(package_license or '(LICENSE missing from the tarball)').strip()}\n")


def fetch_emoji(out_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                classes: str | Mapping[str, EmojiRule] = DEFAULT_PRESET, force: bool = False,
                progress: bool = True, image_size: int = 32) -> dict:
    """Download (or reuse) the pinned emoji tarball and write the ImageFolder tree. Returns a summary dict."""
    start = time.perf_counter()
    if isinstance(classes, str):
        resolve_class_preset(classes)
    _check_emoji_size(image_size)
    _check_out_dir(Path(out_dir).expanduser(), force)       # refuse before spending a download
    tar_path, downloaded = ensure_tarball(cache_dir, progress=progress)
    summary = write_emoji_dataset(tar_path, out_dir, integrity=EXPECTED_INTEGRITY, classes=classes, force=force,
                                  image_size=image_size, tarball_url=TARBALL_URL)
    summary.update(tarball_path=str(tar_path), downloaded=downloaded, seconds=time.perf_counter() - start)
    return summary


# -- ImageFolder loading (users' own data) ----------------------------------------------------------

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
MAX_IMAGES = 200_000
MAX_IMAGE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A whole dataset in memory.

    images:  uint8 tensor (N, 3, H, W), RGB, 0..255 (exact, and 4x smaller than float; `as_float()`
             gives the model's range [-1, 1])
    labels:  int64 tensor (N,), indices into `classes`
    classes: class names = the class folder names, sorted
    files:   each image's path relative to the dataset root, same order as `images`
    """

    images: Any
    labels: Any
    classes: tuple[str, ...]
    files: tuple[str, ...] = ()

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 3 or self.labels.shape != (n,):
            raise ValueError(f"images {tuple(self.images.shape)} / labels {tuple(self.labels.shape)} do not match")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def counts(self) -> dict[str, int]:
        import torch

        per = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, per))

    def as_float(self):
        """float32 (N, 3, H, W) in [-1, 1]."""
        return self.images.float().div(127.5).sub(1.0)


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: p.name)


def _open_image(path: Path):
    from PIL import Image

    try:
        return Image.open(path)
    except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise NitroGenInputError(f"cannot read image {str(path)!r}: {exc}") from None


def _to_rgb(im):
    """Any mode -> RGB; transparency is composited onto white (as for the emoji set)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def load_image_folder(path: str | os.PathLike, image_size: int = 32, *, max_images: int = MAX_IMAGES) -> ImageDataset:
    """Load `path/<class>/<image>` fully into memory as an ImageDataset.

    Classes are the non-hidden subfolders of `path`, sorted by name (label i = i-th folder). Files directly
    in `path` (e.g. manifest.json) and nested folders are ignored. Images (.png .jpg .jpeg .webp .bmp, any
    case) are converted to RGB with transparency composited onto white. Every image must be square and
    exactly image_size x image_size: NitroGen never resizes your data silently.
    """
    import numpy as np
    import torch

    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise NitroGenInputError(f"image_size {image_size!r} must be an integer in 1..{MAX_IMAGE_SIZE}")
    root = Path(path).expanduser()
    if not root.exists():
        raise NitroGenInputError(f"dataset folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NitroGenInputError(f"dataset path {str(root)!r} is not a folder; give a folder of class subfolders")
    try:
        class_dirs = _class_dirs(root)
    except OSError as exc:
        raise NitroGenInputError(f"cannot list dataset folder {str(root)!r}: {exc.strerror or exc}") from None
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:1]
        hint = f" (found loose images such as {loose[0]!r}; move them into a class subfolder)" if loose else ""
        raise NitroGenInputError(f"dataset folder {str(root)!r} has no class subfolders; expected "
                                 f"{str(root)}/<class>/<image>.png{hint}")

    files: list[tuple[Path, int]] = []
    for label, folder in enumerate(class_dirs):
        try:
            found = _image_files(folder)
        except OSError as exc:
            raise NitroGenInputError(f"cannot list class folder {str(folder)!r}: {exc.strerror or exc}") from None
        if not found:
            raise NitroGenInputError(f"class folder {str(folder)!r} has no images ({' '.join(IMAGE_EXTENSIONS)})")
        files.extend((f, label) for f in found)
        if len(files) > max_images:
            raise NitroGenInputError(f"dataset folder {str(root)!r} has more than {max_images:,} images; "
                                     f"that is more than NitroGen loads into memory")

    # Pass 1, headers only (cheap, and bounds memory before decoding anything): square, one size, the right size.
    sizes = []
    for f, _ in files:
        with _open_image(f) as im:
            sizes.append(im.size)
        if im.size[0] != im.size[1]:
            raise NitroGenInputError(f"image {str(f)!r} is {im.size[0]}x{im.size[1]}; images must be square "
                                     f"{image_size}x{image_size} (crop or pad it)")
    first = sizes[0]
    for (f, _), size in zip(files, sizes):
        if size != first:
            raise NitroGenInputError(
                f"mixed image sizes: {str(files[0][0])!r} is {first[0]}x{first[1]} but {str(f)!r} is "
                f"{size[0]}x{size[1]}; every image must be exactly {image_size}x{image_size} (NitroGen does not "
                f"resize your data: resize them all yourself, e.g. Pillow's Image.resize with LANCZOS)")
    if first != (image_size, image_size):
        raise NitroGenInputError(
            f"images in {str(root)!r} are {first[0]}x{first[1]} (e.g. {str(files[0][0])!r}) but image_size is "
            f"{image_size}; resize them to {image_size}x{image_size} yourself (e.g. Pillow's Image.resize with "
            f"LANCZOS) or use image_size={first[0]}")

    # Pass 2: decode.
    array = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        with _open_image(f) as im:
            try:
                im.load()
                rgb = _to_rgb(im)
            except Exception as exc:  # truncated or corrupt pixel data
                raise NitroGenInputError(f"cannot read image {str(f)!r}: {exc}") from None
            if rgb.size != (image_size, image_size):          # e.g. an EXIF rotation of a non-square image
                raise NitroGenInputError(f"image {str(f)!r} decodes to {rgb.size[0]}x{rgb.size[1]}; "
                                         f"expected {image_size}x{image_size}")
            array[i] = np.asarray(rgb, dtype=np.uint8)
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()          # (N, 3, H, W) uint8
    labels = torch.tensor([label for _, label in files], dtype=torch.long)      # (N,)
    return ImageDataset(images=images, labels=labels, classes=tuple(d.name for d in class_dirs),
                        files=tuple(f.relative_to(root).as_posix() for f, _ in files))


# -- CLI: `data emoji` --------------------------------------------------------------------------------

def add_data_parser(subparsers) -> None:
    """Register `data emoji --out DIR [--cache DIR] [--classes PRESET] [--force]` on the top-level subparsers."""
    p = subparsers.add_parser("data", help="prepare training data", description="Prepare training data.")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="{emoji}")
    e = sub.add_parser(
        "emoji", help=f"download {PACKAGE}@{VERSION} (Noto Emoji) and write a 32x32 ImageFolder",
        description=f"Download the pinned npm package {PACKAGE}@{VERSION} (Noto Emoji, Apache-2.0; package "
                    f"MIT), verify its sha512, and write DIR/<class>/<unified>.png (32x32 RGB on white) plus "
                    f"DIR/manifest.json.")
    e.add_argument("--out", required=True, help="output folder (must be new or empty unless --force)")
    e.add_argument("--cache", default=None,
                   help=f"folder for the verified tarball (default {default_cache_dir()}); put {TARBALL_NAME} "
                        f"there to work offline")
    e.add_argument("--classes", default=DEFAULT_PRESET,
                   help=f"class preset: {', '.join(f'{k} ({len(v)} classes)' for k, v in CLASS_PRESETS.items())} "
                        f"(default {DEFAULT_PRESET})")
    e.add_argument("--force", action="store_true", help="replace --out if it holds an earlier `data emoji` output")
    e.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    e.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    e.set_defaults(func=cmd_data)


def cmd_data(args) -> int:
    if args.data_command != "emoji":                 # argparse allows only 'emoji'; keep the dispatch explicit
        raise NitroGenInputError(f"unknown data command {args.data_command!r}; choose emoji")
    if args.classes not in CLASS_PRESETS:
        raise NitroGenInputError(f"--classes {args.classes!r} is unknown; choose one of {sorted(CLASS_PRESETS)}")
    summary = fetch_emoji(args.out, cache_dir=args.cache, classes=args.classes, force=args.force,
                          progress=not args.quiet)
    if getattr(args, "json", False):
        out = getattr(args, "stdout", sys.stdout)
        out.write(json.dumps(summary, sort_keys=True) + "\n")
        out.flush()
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in summary["classes"].items())
    print(f"wrote {summary['out_dir']}: {summary['total']} images of {summary['image_size']}x{summary['image_size']} "
          f"in {len(summary['classes'])} classes ({counts}) from {PACKAGE}@{VERSION} "
          f"({'downloaded' if summary['downloaded'] else 'cached'}), {summary['seconds']:.1f} s")
    return 0
