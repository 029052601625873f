"""The pinned emoji packages behind `data emoji`: what each one is, how it is fetched, read and rasterised.

Everything here is about getting one 32 px RGB image per (style, emoji) out of an npm tarball:

* `SOURCES`: one `EmojiSource` per art style, each pinned to an npm package@version and its sha512 SRI string
  (dist.integrity, recorded when we first fetched it). The images' licence is the artwork's, read from the
  package itself (README/LICENSE/info.json), not the package.json `license` of the code.
* `ensure_tarball(source, cache)`: the only network code. Cached tarballs are re-verified on every use; a
  download is verified before it enters the cache, and before anything is read from it.
* `read_archive(source, data)`: one streaming pass over a verified tarball held in memory. Only regular files
  under the source's image folder with a well-formed name, and a few named metadata files, are read, each with
  a size cap. Nothing is extracted to disk and no archive path is used as a file path.
* `find_image(source, archive, entry, names)`: the image of one emoji.json entry in this style, or None.
  Sets keyed by code point try the fully-qualified, the non-qualified and the FE0F-less sequence. Sets keyed
  by name (Fluent's files, Iconify's JSON) use the CLDR name from OpenMoji's data/openmoji.csv, slugified.
* `rasterise(payload, size)`: PNG/WebP via Pillow; SVG via resvg-py (a self-contained Rust wheel from PyPI,
  no system libraries), rendered at 4x the target size. Alpha is composited onto white, then Pillow's LANCZOS
  downsamples (antialiased) to `size`.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import http.client
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from ..errors import NitroGenInputError

REGISTRY = "https://registry.npmjs.org"
TIMEOUT_S = 30.0                        # per socket operation (connect, each read)
MAX_TARBALL_BYTES = 512 * 2**20         # the largest pinned one (emojione 2.2.7) is 90 MiB
MAX_METADATA_BYTES = 4 * 2**20
MAX_MEMBER_BYTES = 2 * 2**20            # one emoji image: <= 100 KB in every pinned set
MAX_JSON_BYTES = 64 * 2**20             # emoji.json 1.3 MB; Iconify icons.json <= 11 MB
MAX_ASPECT = 1.25                       # longer side / shorter side of a source image
SVG_RENDER_FACTOR = 4                   # SVGs are rendered at 4x the target, then LANCZOS-downsampled
_CHUNK = 2**20

_HEX_STEM = re.compile(r"[0-9A-Fa-f]{2,6}(?:-[0-9A-Fa-f]{2,6})*")      # 1f600, 0023-FE0F-20E3
_SLUG_STEM = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")                    # grinning-face, keycap-0
_UNIFIED = re.compile(r"[0-9A-F]+(?:-[0-9A-F]+)*")


# -- the pinned sources ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EmojiSource:
    """One art style: an npm package@version pinned by SRI, and where its images are inside the tarball.

    kind: 'datasource'  emoji-datasource-<set>: package/emoji.json + img/<set>/64/<entry['image']>
          'codepoint'   files named by code point sequence under `member` (case per `case`)
          'slug'        files named by slugified CLDR name under `member`
          'iconify'     one Iconify JSON file `member` whose icon names are slugified CLDR names
    """

    style: str
    title: str
    package: str
    version: str
    integrity: str
    kind: str
    member: str
    ext: str = ".png"
    case: str = "lower"
    source_px: int | None = None            # raster side in the package; None for SVG (rendered)
    datasource_set: str = ""
    image_license: str = ""
    package_license: str = ""
    attribution: str = ""
    upstream: str = ""
    licence_evidence: str = ""
    note: str = ""

    @property
    def tarball_name(self) -> str:          # what `npm pack` calls it: @scope/name -> scope-name-VERSION.tgz
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def registry_url(self) -> str:
        return f"{REGISTRY}/{self.package}/{self.version}"

    @property
    def tarball_url(self) -> str:           # what dist.tarball says today
        return f"{REGISTRY}/{self.package}/-/{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def is_svg(self) -> bool:
        return self.ext == ".svg" or self.kind == "iconify"

    def describe(self) -> str:
        return f"{self.package}@{self.version}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(tarball=self.tarball_url, registry=self.registry_url,
                 images=(f"{self.member}<name>{self.ext}" if self.kind != "iconify" else f"{self.member} (SVG bodies)"),
                 raster=(f"{self.source_px} px" if self.source_px else f"SVG rendered by resvg-py at "
                         f"{SVG_RENDER_FACTOR}x the target size"))
        return d


CATALOGUE_STYLE = "noto"        # its emoji.json is the catalogue: subcategories, short names, code points
NAMES_STYLE = "openmoji"        # its data/openmoji.csv maps code points to the CLDR names Fluent/Iconify use

SOURCES: tuple[EmojiSource, ...] = (
    EmojiSource(
        style="noto", title="Noto Emoji (Google, current)", package="emoji-datasource-google", version="16.0.0",
        integrity="sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        kind="datasource", member="package/img/google/64/", source_px=64, datasource_set="google",
        image_license="Apache-2.0", package_license="MIT",
        attribution="Noto Emoji, (c) Google Inc., Apache License 2.0",
        upstream="https://github.com/googlefonts/noto-emoji",
        licence_evidence="package README: 'Android/Google/Noto images, are available under the Apache License 2.0'"),
    EmojiSource(
        style="twemoji", title="Twemoji (Twitter / jdecked)", package="emoji-datasource-twitter", version="16.0.0",
        integrity="sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        kind="datasource", member="package/img/twitter/64/", source_px=64, datasource_set="twitter",
        image_license="CC-BY-4.0", package_license="MIT",
        attribution="Twemoji graphics, (c) Twitter, Inc. and other contributors (jdecked/twemoji), CC BY 4.0",
        upstream="https://github.com/jdecked/twemoji",
        licence_evidence="package README: 'Twitter images are available under the Creative Commons Attribution "
                         "4.0 license' (LICENSE-GRAPHICS of twemoji v15.0.2)"),
    EmojiSource(
        style="openmoji", title="OpenMoji", package="openmoji", version="17.0.0",
        integrity="sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
        kind="codepoint", member="package/color/svg/", ext=".svg", case="upper",
        image_license="CC-BY-SA-4.0", package_license="CC-BY-SA-4.0",
        attribution="OpenMoji, the open-source emoji and icon project (HfG Schwaebisch Gmuend), CC BY-SA 4.0",
        upstream="https://openmoji.org",
        licence_evidence="package.json license CC-BY-SA-4.0 and LICENSE.txt; the package ships SVGs only "
                         "(color/svg, black/svg), no PNGs"),
    EmojiSource(
        style="emojione2", title="EmojiOne 2 (artwork before the JoyPixels licence change)", package="emojione",
        version="2.2.7",
        integrity="sha512-Gbf8qysc34+TFUS5HPwOUY62v8gjLuPmfVTWUR/zirULSYUe/D3MrvYo0W5Y2gScF1YI7EBe5t81IbD8q144Ag==",
        kind="codepoint", member="package/assets/png_128x128/", source_px=128, case="lower",
        image_license="CC-BY-4.0", package_license="MIT",
        attribution="Emoji artwork provided by EmojiOne (v2.2.7), CC BY 4.0",
        upstream="https://github.com/joypixels/emojione",
        licence_evidence="package LICENSE.md: 'EmojiOne Artwork: applies to all PNG and SVG files ... Creative "
                         "Commons Attribution 4.0 International' (versions >= 2.0.0; 3.x and later are not used)",
        note="png_128x128, not png_512x512: 4x the target, like the SVG sets; LANCZOS from either is the same"),
    EmojiSource(
        style="emojione1", title="EmojiOne 1 (legacy)", package="@iconify-json/emojione-v1", version="1.2.3",
        integrity="sha512-UjI2VQEXVtGlPBvQuxEizro7QCgBcJDOYwKUupquvvZ8UV4xOlvm45IU82JYWegiAWLerY79gFLMZ26U6Ms+ww==",
        kind="iconify", member="package/icons.json",
        image_license="CC-BY-SA-4.0", package_license="CC-BY-SA-4.0",
        attribution="Emoji One (v1) artwork by EmojiOne (joypixels/emojione-legacy), CC BY-SA 4.0",
        upstream="https://github.com/joypixels/emojione-legacy",
        licence_evidence="package info.json license CC-BY-SA-4.0; emojione's LICENSE.md: artwork of versions "
                         "< 2.0.0 is CC BY-SA 4.0"),
    EmojiSource(
        style="fluent3d", title="Fluent Emoji 3D (Microsoft)", package="@lobehub/fluent-emoji-3d", version="1.1.0",
        integrity="sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1DLRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g==",
        kind="codepoint", member="package/assets/", ext=".webp", source_px=256, case="lower",
        image_license="MIT", package_license="MIT",
        attribution="Fluent Emoji, (c) Microsoft Corporation (microsoft/fluentui-emoji), MIT; 3D WebPs "
                    "repackaged by LobeHub",
        upstream="https://github.com/microsoft/fluentui-emoji",
        licence_evidence="package.json and README: MIT (LobeHub); the artwork is Microsoft's Fluent Emoji, "
                         "released under MIT",
        note="its country flags are not part of Microsoft's MIT release (which has none) and their origin is not "
             "stated, so the flag class never takes them"),
    EmojiSource(
        style="fluentflat", title="Fluent Emoji Flat (Microsoft)", package="fluentui-emoji", version="1.3.0",
        integrity="sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==",
        kind="slug", member="package/icons/flat/", ext=".svg",
        image_license="MIT", package_license="MIT",
        attribution="Fluent Emoji, (c) Microsoft Corporation (microsoft/fluentui-emoji), MIT; SVGs repackaged "
                    "by Mohammad Abu Mattar",
        upstream="https://github.com/microsoft/fluentui-emoji",
        licence_evidence="package LICENSE: MIT; README: built from microsoft/fluentui-emoji (MIT)",
        note="icons/modern (Fluent 'Color') is not used: at 32 px it is the flat set with faint gradients"),
    EmojiSource(
        style="notov1", title="Noto Emoji v1 (Google, 2016 'blob' era)", package="@iconify-json/noto-v1",
        version="1.2.5",
        integrity="sha512-/DsVMius69Q0fRS53z7QK1TROSuar606jiIx+laXtdsYGMXpf6LtHBx6CGfoo3UHHb/XpBsw+1L1x3eyPqMuVA==",
        kind="iconify", member="package/icons.json",
        image_license="Apache-2.0", package_license="Apache-2.0",
        attribution="Noto Emoji v1, (c) Google Inc., Apache License 2.0",
        upstream="https://github.com/googlefonts/noto-emoji",
        licence_evidence="package info.json license Apache-2.0 (noto-emoji svg/LICENSE)"),
)
SOURCES_BY_STYLE: dict[str, EmojiSource] = {s.style: s for s in SOURCES}
STYLES: tuple[str, ...] = tuple(SOURCES_BY_STYLE)


def resolve_styles(styles: str | list | tuple | None) -> tuple[str, ...]:
    """'noto,twemoji' / a list / None (all) -> style names in SOURCES order; unknown names are an error."""
    if styles is None:
        return STYLES
    names = [s.strip() for s in (styles.split(",") if isinstance(styles, str) else styles)]
    names = [s for s in names if s]
    unknown = [s for s in names if s not in SOURCES_BY_STYLE]
    if unknown or not names:
        raise NitroGenInputError(f"styles {unknown or names!r} unknown; choose from {', '.join(STYLES)}")
    return tuple(s for s in STYLES if s in names)


def needed_sources(styles: tuple[str, ...]) -> tuple[EmojiSource, ...]:
    """The sources a build of `styles` must read: the styles, plus the catalogue and the CLDR name map."""
    needed = set(styles) | {CATALOGUE_STYLE}
    if any(SOURCES_BY_STYLE[s].kind in ("slug", "iconify") for s in styles):
        needed.add(NAMES_STYLE)
    return tuple(s for s in SOURCES if s.style in needed)


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


def _network_error(url: str, exc: BaseException, timeout: float, tarball_name: str = "") -> NitroGenInputError:
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, TimeoutError) or "timed out" in str(exc):
        reason = f"no answer within {timeout:g} s"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    else:
        reason = str(exc) or type(exc).__name__
    offline = f"put {tarball_name} into the cache folder (--cache)" if tarball_name else \
        "put the pinned tarballs into the cache folder (--cache)"
    return NitroGenInputError(f"could not download {url}: {reason}; check the network (only the npm registry is "
                              f"needed), or {offline} to work offline")


_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


def fetch_registry_metadata(url: str, *, timeout: float = TIMEOUT_S, tarball_name: str = "") -> tuple[str, str]:
    """Ask the npm registry for one version's (dist.tarball, dist.integrity)."""
    try:
        with _open_url(url, timeout, "application/json") as response:
            body = response.read(MAX_METADATA_BYTES + 1)
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, exc, timeout, tarball_name) from None
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
                max_bytes: int = MAX_TARBALL_BYTES, desc: str | None = None, tarball_name: str = "") -> int:
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
        raise _network_error(url, exc, timeout, tarball_name) from None
    if total is not None and received != total:
        raise NitroGenInputError(f"download of {url} ended after {received:,} of {total:,} bytes; try again")
    return received


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "nitrogen"
    return Path(cache_dir).expanduser()


def ensure_tarball(source: EmojiSource, cache_dir: str | os.PathLike | None = None, *, progress: bool = True,
                   timeout: float = TIMEOUT_S) -> tuple[Path, bool]:
    """Return (path of the verified, cached tarball of `source`, whether it was downloaded now)."""
    cache = cache_folder(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NitroGenInputError(f"cannot create the cache folder {str(cache)!r}: {exc.strerror or exc}") from None
    if not cache.is_dir():
        raise NitroGenInputError(f"cache folder {str(cache)!r} is not a directory")
    name = source.tarball_name
    target = cache / name
    if target.is_file():
        try:
            check_integrity(read_capped(target), source.integrity, what=str(target))
            log(progress, f"using cached {target}")
            return target, False
        except (NitroGenInputError, OSError) as exc:
            log(progress, f"ignoring the cached tarball: {exc}")

    tarball_url, integrity = fetch_registry_metadata(source.registry_url, timeout=timeout, tarball_name=name)
    if integrity != source.integrity:
        raise NitroGenInputError(
            f"the registry now lists integrity {integrity} for {source.describe()}, but NitroGen pins "
            f"{source.integrity}; refusing a changed upstream file")
    log(progress, f"downloading {tarball_url}")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
    except OSError as exc:
        raise NitroGenInputError(f"cannot write to the cache folder {str(cache)!r}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            download_to(tarball_url, out, progress=progress, timeout=timeout, desc=name, tarball_name=name)
        # Verified before it enters the cache, and before anything is extracted from it.
        check_integrity(read_capped(tmp), source.integrity, what=f"the download of {tarball_url}")
        os.replace(tmp, target)
    except OSError as exc:
        raise NitroGenInputError(f"cannot write to the cache folder {str(cache)!r}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target, True


def read_capped(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_TARBALL_BYTES:
            raise NitroGenInputError(f"{path} is {size:,} bytes; more than the {MAX_TARBALL_BYTES:,} allowed")
        return path.read_bytes()
    except OSError as exc:
        raise NitroGenInputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


# -- reading an archive ------------------------------------------------------------------------------

@dataclasses.dataclass
class Archive:
    """What one verified tarball holds that we use."""

    images: dict                # key -> PNG/WebP bytes or SVG text. Keys: file name (datasource), upper-case
                                # code point stem (codepoint), slug (slug, iconify)
    emoji: list | None = None   # package/emoji.json (datasource only)
    names: dict | None = None   # upper-case code point sequence -> CLDR name (openmoji's data/openmoji.csv)
    package_json: dict | None = None


def read_archive(source: EmojiSource, data: bytes, *, what: str = "tarball") -> Archive:
    """Read only the members `source` needs from an npm .tgz held in memory, in one streaming pass."""
    images: dict[str, Any] = {}
    emoji = names = package_json = icons = None
    wants_names = source.style == NAMES_STYLE
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():                        # no links, devices or directories
                    continue
                if source.kind == "iconify":
                    if name == source.member and member.size <= MAX_JSON_BYTES:
                        icons = json.loads(tar.extractfile(member).read())
                elif name.startswith(source.member) and member.size <= MAX_MEMBER_BYTES:
                    base = name[len(source.member):]
                    stem, ext = base[: -len(source.ext)], base[-len(source.ext):]
                    if ext.lower() != source.ext:
                        continue
                    if source.kind == "datasource" and _HEX_STEM.fullmatch(stem) and stem == stem.lower():
                        images[base] = tar.extractfile(member).read()
                    elif source.kind == "codepoint" and _HEX_STEM.fullmatch(stem):
                        images[stem.upper()] = _payload(source, tar.extractfile(member).read())
                    elif source.kind == "slug" and _SLUG_STEM.fullmatch(stem):
                        images[stem] = _payload(source, tar.extractfile(member).read())
                if name == "package/emoji.json" and source.kind == "datasource" and member.size <= MAX_JSON_BYTES:
                    emoji = json.loads(tar.extractfile(member).read())
                elif name == "package/package.json" and member.size <= MAX_MEMBER_BYTES:
                    package_json = json.loads(tar.extractfile(member).read())
                elif wants_names and name == "package/data/openmoji.csv" and member.size <= MAX_JSON_BYTES:
                    names = _read_cldr_names(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # ValueError covers bad JSON/UTF-8
        raise NitroGenInputError(f"{what} is not a readable {source.describe()} package: {exc}") from None
    if source.kind == "iconify":
        images = _iconify_svgs(icons, what=what)
    if source.kind == "datasource" and not isinstance(emoji, list):
        raise NitroGenInputError(f"{what} has no package/emoji.json list")
    if wants_names and not names:
        raise NitroGenInputError(f"{what} has no package/data/openmoji.csv with hexcode/annotation columns")
    if not images:
        raise NitroGenInputError(f"{what} has no images under {source.member}")
    return Archive(images=images, emoji=emoji, names=names, package_json=package_json)


def _payload(source: EmojiSource, raw: bytes):
    return raw.decode("utf-8") if source.is_svg else raw


def _read_cldr_names(raw: bytes) -> dict[str, str]:
    names: dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        hexcode, annotation = (row.get("hexcode") or "").upper(), row.get("annotation") or ""
        if _UNIFIED.fullmatch(hexcode) and annotation and not row.get("skintone"):
            names[hexcode] = annotation
    return names


def _iconify_svgs(icons: Any, *, what: str) -> dict[str, str]:
    """Iconify JSON -> {icon name: standalone SVG text}. Aliases with transformations are skipped."""
    if not isinstance(icons, dict) or not isinstance(icons.get("icons"), dict):
        raise NitroGenInputError(f"{what} has no Iconify icons.json with an 'icons' object")
    default_w, default_h = icons.get("width", 16), icons.get("height", 16)
    out: dict[str, str] = {}

    def svg(icon: Mapping) -> str | None:
        body = icon.get("body")
        w, h = icon.get("width", default_w), icon.get("height", default_h)
        left, top = icon.get("left", 0), icon.get("top", 0)
        if not isinstance(body, str) or any(k in icon for k in ("rotate", "hFlip", "vFlip")):
            return None
        if not all(isinstance(v, (int, float)) for v in (w, h, left, top)) or w <= 0 or h <= 0:
            return None
        return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{body}</svg>')

    for name, icon in icons["icons"].items():
        if isinstance(icon, dict) and _SLUG_STEM.fullmatch(str(name)) and (s := svg(icon)) is not None:
            out[name] = s
    for name, alias in (icons.get("aliases") or {}).items():
        if (isinstance(alias, dict) and _SLUG_STEM.fullmatch(str(name)) and name not in out
                and set(alias) == {"parent"} and alias["parent"] in out):
            out[name] = out[alias["parent"]]
    return out


# -- finding one emoji in a style ---------------------------------------------------------------------

def code_point_keys(entry: Mapping) -> list[str]:
    """unified, non_qualified, and unified without FE0F (variation selector), upper case, no repeats."""
    keys = []
    for k in (entry.get("unified"), entry.get("non_qualified"),
              "-".join(p for p in str(entry.get("unified", "")).split("-") if p.upper() != "FE0F")):
        if isinstance(k, str) and _UNIFIED.fullmatch(k.upper()) and k.upper() not in keys:
            keys.append(k.upper())
    return keys


def slugify(name: str) -> str:
    """CLDR name -> the file/icon names Fluent and Iconify use: 'eight o’clock' -> 'eight-oclock'."""
    name = name.lower().replace("\u2019", "").replace("'", "")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def find_image(source: EmojiSource, archive: Archive, entry: Mapping, names: Mapping[str, str] | None):
    """(member name for the manifest, payload) of `entry` in this style, or None if the style lacks it."""
    if source.kind == "datasource":
        image = entry.get("image")
        if entry.get(f"has_img_{source.datasource_set}") and isinstance(image, str) and image in archive.images:
            return f"{source.member}{image}", archive.images[image]
        return None
    for key in code_point_keys(entry):
        if source.kind == "codepoint":
            if key in archive.images:
                stem = key if source.case == "upper" else key.lower()
                return f"{source.member}{stem}{source.ext}", archive.images[key]
        elif names is not None and key in names:
            for slug in slug_variants(slugify(names[key])):
                if slug in archive.images:
                    where = f"{source.member}#{slug}" if source.kind == "iconify" else \
                        f"{source.member}{slug}{source.ext}"
                    return where, archive.images[slug]
    return None


def slug_variants(slug: str) -> list[str]:
    """The slug, and the older CLDR spelling of flags ('Flag for France') that Iconify's legacy sets use."""
    return [slug, f"flag-for-{slug[5:]}"] if slug.startswith("flag-") else [slug]


# -- rasterising ---------------------------------------------------------------------------------------

def svg_renderer_version() -> str | None:
    try:
        import resvg_py
    except ImportError:
        return None
    return f"resvg-py {getattr(resvg_py, '__version__', '?')} (resvg {getattr(resvg_py, '__resvg_version__', '?')})"


def require_svg_renderer(styles: tuple[str, ...]) -> None:
    """One-line error, before any download, if an SVG style is asked for and resvg-py is missing."""
    svg = [s for s in styles if SOURCES_BY_STYLE[s].is_svg]
    if svg and svg_renderer_version() is None:
        rest = ",".join(s for s in styles if s not in svg)
        raise NitroGenInputError(
            f"the SVG styles {', '.join(svg)} need the PyPI package resvg-py to rasterise (a self-contained wheel, "
            f"no system libraries): pip install 'resvg-py==0.5.0', or pass --styles {rest or 'noto'}")


def to_rgb(png: bytes, size: int, *, what: str = "image"):
    """PNG/WebP bytes -> RGB PIL image of size x size: alpha composited onto white, then Lanczos-downsampled.

    Compositing first is the same as resampling premultiplied colour, so edges get no dark fringes.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            rgba = im.convert("RGBA")
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not a usable image"
        raise NitroGenInputError(f"{what} is not a readable image: {exc}") from None
    w, h = rgba.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise NitroGenInputError(f"{what} is {w}x{h}; expected a (nearly) square emoji")
    # A few sets have images a few pixels off square (Fluent 3D: 256x264): centre them on a square canvas,
    # as an emoji renderer fits a glyph into its square cell, rather than stretching them.
    side = max(w, h)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - w) // 2, (side - h) // 2))
    rgb = canvas.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)   # antialiased: the kernel widens when shrinking
    return rgb


def rasterise(payload, size: int, *, what: str = "image"):
    """Bytes of a PNG/WebP, or SVG text -> RGB PIL image size x size on white."""
    if isinstance(payload, str):
        import resvg_py

        px = size * SVG_RENDER_FACTOR
        try:
            png = bytes(resvg_py.svg_to_bytes(svg_string=payload, width=px, height=px, skip_system_fonts=True))
        except Exception as exc:  # resvg raises ValueError for bad SVG; anything else is equally fatal here
            raise NitroGenInputError(f"{what} is not a renderable SVG: {exc}") from None
        return to_rgb(png, size, what=what)
    return to_rgb(payload, size, what=what)
