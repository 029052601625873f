"""Training data: the multi-style emoji corpus (select, render, split by emoji, write) and ImageFolder loading.

Entry points:

* `fetch_emoji(out_dir)` builds the emoji corpus, `python -m nitrogen_core data emoji --out DIR` on the CLI.
  It reads several pinned npm packages, one per art style (`emoji_sources.SOURCES`: Noto, Twemoji, OpenMoji,
  EmojiOne 1 and 2, Fluent 3D and flat, Noto v1), each checked against its sha512 before anything is read
  from it and cached so reruns are offline. The classes (`EMOJI_CLASSES`) are rules over the catalogue
  (emoji-datasource's emoji.json); every style contributes the emoji it draws, unless a rule says that style
  draws the group differently. Style is not a class. The layout is

      DIR/manifest.json                        sources, rules, counts, one record per image
      DIR/LICENSE.txt                          credits and licences of the artwork
      DIR/train/<class>/<style>_<unified>.png  32x32 RGB on white
      DIR/heldout/<class>/<style>_<unified>.png

  The held-out split is by emoji: about 10% of each class's emoji, in every style, are never trained on
  (`split_groups`). Emoji whose images are exact or near duplicates (e.g. the flags of France and Saint Martin)
  are grouped and always land on the same side.
* `load_split(root, split)` loads the train or heldout half of such a corpus.
* `load_image_folder(path)` loads any `root/<class>/<image>` tree fully into memory; given a corpus root
  (train/ + heldout/ + our manifest) it loads the TRAIN split only, so training never sees held-out emoji
  by accident. Images must already be square and exactly `image_size`: we never resize a user's data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import NitroGenInputError
from . import emoji_sources as S
from .emoji_sources import check_integrity, parse_sri, sri_of  # noqa: F401 - re-exported (tests, callers)

MANIFEST = "manifest.json"
GENERATOR = "nitrogen_core.train.data.fetch_emoji"
MANIFEST_VERSION = 2
SPLITS = ("train", "heldout")
SPLIT_SALT = "nitrogen-emoji32-v2/heldout"      # changing it re-draws the held-out emoji
HELDOUT_FRACTION = 0.10
# Two emoji of one class are grouped (same split) when any two of their images, in any styles, are this close
# (PSNR of uint8 RGB): the near-copy threshold of the quality bar, so no held-out image is a near copy of a
# training image. Measured on the built corpus: different emoji of one class are at most 31-33 dB apart (clock
# faces one step apart, frowning vs slightly frowning in OpenMoji), so groups stay pairs and never chain.
NEAR_DUPLICATE_DB = 30.0


def default_cache_dir() -> Path:
    return S.cache_folder(None)


# -- class rules ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EmojiRule:
    """Which emoji.json entries form one class, and from which styles.

    An entry matches if its subcategory is in `subcategories` (then `include`, `pattern` and `exclude` apply),
    or if its short_name is in `add` and its subcategory in `add_subcategories` (single emoji from elsewhere).
    Skin-tone variants live under `skin_variations` and are never top-level entries, so no rule picks them up.

    styles_by_subcategory: (subcategory, styles) pairs: entries of that subcategory are taken only from those
        styles, because the others draw them differently (e.g. round flags). Other subcategories: all styles.
    style_exclude: (style, short_names) pairs: single emoji a style draws off-template.
    """

    subcategories: tuple[str, ...]
    include: tuple[str, ...] = ()       # if set, only these short_names (of `subcategories`)
    pattern: str | None = None          # if set, short_name must fully match this regex
    exclude: tuple[str, ...] = ()       # short_names to drop
    limit: int | None = None            # keep at most this many emoji, evenly spaced in emoji order
    note: str = ""                      # why the class looks like this (copied into manifest.json)
    add: tuple[str, ...] = ()           # single short_names from `add_subcategories`
    add_subcategories: tuple[str, ...] = ()
    styles_by_subcategory: tuple[tuple[str, tuple[str, ...]], ...] = ()
    style_exclude: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def matches(self, entry: Mapping[str, Any]) -> bool:
        name, sub = entry.get("short_name"), entry.get("subcategory")
        if not isinstance(name, str):
            return False
        if sub in self.add_subcategories and name in self.add:
            return True
        if sub not in self.subcategories:
            return False
        if self.include and name not in self.include:
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, name):
            return False
        return name not in self.exclude

    def allows(self, style: str, entry: Mapping[str, Any]) -> bool:
        """Whether this class takes `entry`'s image from `style`."""
        for sub, styles in self.styles_by_subcategory:
            if entry.get("subcategory") == sub and style not in styles:
                return False
        return not any(style == s and entry.get("short_name") in names for s, names in self.style_exclude)

    def to_json(self) -> dict:
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, tuple) else v
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


# Calibration: a 9-group probe (655 Noto images) learned faces, hearts, flags and clocks clearly, fruit and
# vehicles partly, and left mammals and weather as blobs. So every class is one visual template with little
# variation in silhouette, across all styles, checked on 32 px contact sheets of every style. The bar is
# >= 150 training images per class. Labels are the folder names in sorted order (the bundled model uses
# these 9 names), so this dict is kept alphabetical.
# Dropped groups: animal-* (silhouettes too varied: the probe's blobs), sky & weather (no shared template),
# alphanum (text), person-*/hand-* (skin-tone bases, complex), cat-face (only 9).
TILE_STYLES = ("noto", "twemoji", "emojione1", "fluent3d", "fluentflat")    # arrows/media keys drawn on tiles
FLAG_STYLES = ("noto", "twemoji", "openmoji", "emojione1")                  # rectangular country flags
AV_NOT_BUTTONS = ("cinema", "low_brightness", "high_brightness", "signal_strength", "wireless", "vibration_mode",
                  "mobile_phone_off")

EMOJI_CLASSES: dict[str, EmojiRule] = {
    # 24 analogue clock faces per style, identical but for the hands: learned clearly in the probe, and the
    # hands are a small detail that forces the gate to keep computing there. Every style draws a round dial
    # (OpenMoji's is a thin outline, EmojiOne 2's a dark disc). Hourglasses, watch, alarm clock, stopwatch,
    # timer and mantelpiece clock are different objects, so the regex keeps clockN/clockN30 only.
    "clock": EmojiRule(("time",), pattern=r"clock\d+",
                       note="clock faces only (clock1..clock1230), every style; other timepieces dropped"),
    # Waving/flat rectangles in the styles that draw rectangles. EmojiOne 2 draws round badges (a different
    # silhouette); Fluent 3D's flags are not in Microsoft's MIT release. 259 flags x 4 styles would outweigh
    # every other class ~5:1, so `limit` keeps 100 flags, evenly spaced by country code (was 64, Noto only).
    "flag": EmojiRule(("country-flag",), limit=100, styles_by_subcategory=(("country-flag", FLAG_STYLES),),
                      note=f"country flags from the rectangular styles ({', '.join(FLAG_STYLES)}), 100 evenly "
                           f"spaced; exact/near duplicates (fr/mf, no/sj/bv, us/um) grouped into one split"),
    # Single fruits (compact, colourful, centred) plus the vegetables that are one compact object. Vegetables
    # made of many parts or leaves (corn cob in husk, leafy green, peanuts, beans, pea pod, ginger, mushroom,
    # root vegetable) vary too much in silhouette between styles.
    "fruit": EmojiRule(("food-fruit", "food-vegetable"), exclude=(
        "corn", "leafy_green", "peanuts", "beans", "pea_pod", "ginger_root", "brown_mushroom", "root_vegetable"),
        note="food-fruit and the compact single-object vegetables"),
    # Heart shapes in many colours (learned clearly), plus the card-suit heart and the heart exclamation (a
    # heart over a dot). The love letter (an envelope) and the heart decoration (a square tile) are dropped.
    "heart": EmojiRule(("heart",), exclude=("love_letter", "heart_decoration"), add=("hearts",),
                       add_subcategories=("game",),
                       note="heart shapes incl. the card suit; envelope and square tile dropped"),
    # Rounded square tiles with a glyph: the 13 keycaps (a tile in every style), and, from the styles that
    # draw them on the same tiles, the 16 arrow tiles and 18 media-key tiles (play, pause, ...). OpenMoji and
    # Noto v1 draw bare arrows, EmojiOne 2 draws round badges, so those styles give keycaps only. Tiles with
    # words (BACK, END, ON!, SOON, TOP) and the non-button media symbols (sun, bars, phone) are dropped.
    "key": EmojiRule(("keycap", "arrow", "av-symbol"), exclude=("back", "end", "on", "soon", "top", *AV_NOT_BUTTONS),
                     styles_by_subcategory=(("arrow", TILE_STYLES), ("av-symbol", TILE_STYLES)),
                     # Noto v1's # and * keycaps render as blank tiles (their glyph is text); EmojiOne 1 draws
                     # the clockwise-arrows button as a bare black arrow.
                     style_exclude=(("notov1", ("hash", "keycap_star")), ("emojione1", ("arrows_clockwise",))),
                     note=f"keycaps (all styles); arrow and media-key tiles from {', '.join(TILE_STYLES)}"),
    # Yellow discs with a worried/sad/scared/cross expression: same template as `smiley`, different mouth and
    # eyes, so the pair tests whether the class label controls a few-pixel detail. Scream and yawning faces
    # have hands over the face and are dropped; pensive, unamused, steaming, angry and dizzy faces are the same
    # disc with a negative expression.
    "sad": EmojiRule(("face-concerned",), exclude=("scream", "yawning_face"),
                     add=("pensive", "unamused", "triumph", "angry", "dizzy_face"),
                     add_subcategories=("face-sleepy", "face-neutral-skeptical", "face-negative", "face-unwell"),
                     note="face-concerned without hands over the face, plus pensive, unamused, triumph, angry, "
                          "dizzy"),
    # Big flat circles, squares and diamonds (probe: 'shapes'): flat colour on white, the easy end for the
    # adaptive sampler. Dropped: the diamond-with-dot (an icon), and the 2 small squares, which are a few
    # pixels on white at 32 px. The small diamonds and triangles and the framed square/radio buttons are
    # still plain shapes, and fill the class in styles that lack the newer coloured squares.
    "shape": EmojiRule(("geometric",), exclude=("diamond_shape_with_a_dot_inside", "black_small_square",
                                                 "white_small_square"),
                       note="plain circles, squares, diamonds and triangles; icon and tiny squares dropped"),
    # Yellow discs with a happy expression (faces were learned clearly): smiling, affection and tongue faces,
    # plus sunglasses, nerd, relieved and smirking faces (same disc). The melting face is a puddle, the
    # rolling-on-the-floor face is tilted: both dropped.
    "smiley": EmojiRule(("face-smiling", "face-affection", "face-tongue"),
                        exclude=("melting_face", "rolling_on_the_floor_laughing"),
                        add=("sunglasses", "nerd_face", "relieved", "smirk"),
                        add_subcategories=("face-glasses", "face-sleepy", "face-neutral-skeptical"),
                        note="happy yellow faces: face-smiling, face-affection, face-tongue, + sunglasses, nerd, "
                             "relieved, smirk; melting and tilted faces dropped"),
    # Side views of vehicles: a body over wheels (road vehicles, rail cars, two-wheelers) or a hull over water
    # (ships and boats), facing sideways. transport-ground also holds head-on views (oncoming_*, metro, tram),
    # signs, tracks and a fuel pump, which made the probe's vehicle class only partly learned; they and the
    # aircraft (drawn at many angles) stay out.
    "vehicle": EmojiRule(("transport-ground",), include=(
        "bus", "trolleybus", "minibus", "ambulance", "fire_engine", "police_car", "taxi", "car", "blue_car",
        "pickup_truck", "truck", "articulated_lorry", "tractor", "racing_car", "auto_rickshaw",
        "steam_locomotive", "railway_car", "bullettrain_side", "train", "mountain_railway",
        "racing_motorcycle", "motor_scooter", "bike", "scooter"),
        add=("boat", "speedboat", "passenger_ship", "ferry", "motor_boat", "ship"),
        add_subcategories=("transport-water",),
        note="side views: road vehicles, rail cars, two-wheelers, ships; head-on views and aircraft dropped"),
}

# Three well-learned classes for the `tiny` config preset (num_classes=3) and quick smoke runs.
TINY_CLASSES: dict[str, EmojiRule] = {k: EMOJI_CLASSES[k] for k in ("flag", "heart", "smiley")}

CLASS_PRESETS: dict[str, dict[str, EmojiRule]] = {"emoji32": EMOJI_CLASSES, "tiny": TINY_CLASSES}
DEFAULT_PRESET = "emoji32"


def resolve_class_preset(name: str) -> dict[str, EmojiRule]:
    if name not in CLASS_PRESETS:
        raise NitroGenInputError(f"class preset {name!r} is unknown; choose one of {sorted(CLASS_PRESETS)}")
    return CLASS_PRESETS[name]


# -- selection ------------------------------------------------------------------------------

_UNIFIED = re.compile(r"[0-9A-F]+(?:-[0-9A-F]+)*")


def select_emoji(entries: list, rules: Mapping[str, EmojiRule]) -> dict:
    """Class name -> catalogue entries in emoji order (sort_order). Pure; no images needed.

    Rules must not overlap, every include/exclude/add/style_exclude name must exist in the rule's
    subcategories (catches typos), and no class may come out empty.
    """
    selected: dict[str, list] = {name: [] for name in rules}
    owner: dict[str, str] = {}
    names_by_sub: dict[str, set] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("subcategory"), str):
            names_by_sub.setdefault(entry["subcategory"], set()).add(entry.get("short_name"))
        unified = entry.get("unified")
        if not (isinstance(unified, str) and _UNIFIED.fullmatch(unified)):
            continue
        for name, rule in rules.items():
            if rule.matches(entry):
                if unified in owner:
                    raise NitroGenInputError(f"emoji {unified} ({entry.get('short_name')}) matches both class "
                                             f"{owner[unified]!r} and {name!r}; class rules must not overlap")
                owner[unified] = name
                selected[name].append(entry)
    for name, rule in rules.items():
        def known(subs):
            return set().union(*(names_by_sub.get(s, set()) for s in subs))
        missing = [n for n in (*rule.include, *rule.exclude) if n not in known(rule.subcategories)]
        missing += [n for n in rule.add if n not in known(rule.add_subcategories)]
        missing += [n for _, names in rule.style_exclude for n in names
                    if n not in known(rule.subcategories + rule.add_subcategories)]
        if missing:
            raise NitroGenInputError(f"class {name!r} names {missing} which are not in its subcategories "
                                     f"{list(rule.subcategories + rule.add_subcategories)}")
        bad_styles = [s for _, styles in rule.styles_by_subcategory for s in styles if s not in S.SOURCES_BY_STYLE]
        bad_styles += [s for s, _ in rule.style_exclude if s not in S.SOURCES_BY_STYLE]
        if bad_styles:
            raise NitroGenInputError(f"class {name!r} names styles {bad_styles}; known styles are {list(S.STYLES)}")
        if not selected[name]:
            raise NitroGenInputError(f"class {name!r} matches no emoji (subcategories {list(rule.subcategories)})")
        selected[name].sort(key=lambda e: (e.get("sort_order", 0), e["unified"]))
    return selected


def _evenly_spaced(items: list, limit: int | None) -> list:
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[(i * len(items)) // limit] for i in range(limit)]


@dataclasses.dataclass
class Candidate:
    """One (class, style, emoji) image: where it comes from and, once rendered, its pixels."""

    cls: str
    style: str
    entry: dict
    member: str                 # path inside the tarball (manifest provenance)
    payload: Any                # PNG/WebP bytes or SVG text
    image: Any = None           # RGB PIL image, image_size x image_size
    split: str | None = None

    @property
    def unified(self) -> str:
        return self.entry["unified"]


def gather_candidates(selected: Mapping[str, list], rules: Mapping[str, EmojiRule], styles: tuple[str, ...],
                      archives: Mapping[str, S.Archive], names: Mapping[str, str] | None) -> dict[str, list]:
    """Class -> candidates (emoji order, then style order), after each rule's style filter and limit.

    The limit counts distinct emoji that have an image in at least one allowed style.
    """
    out: dict[str, list] = {}
    for cls in sorted(selected):
        rule = rules[cls]
        per_emoji: list[list[Candidate]] = []
        for entry in selected[cls]:
            found = []
            for style in styles:
                if not rule.allows(style, entry):
                    continue
                hit = S.find_image(S.SOURCES_BY_STYLE[style], archives[style], entry, names)
                if hit is not None:
                    found.append(Candidate(cls, style, entry, member=hit[0], payload=hit[1]))
            if found:
                per_emoji.append(found)
        if not per_emoji:
            raise NitroGenInputError(f"class {cls!r} has no image in styles {list(styles)}")
        out[cls] = [c for group in _evenly_spaced(per_emoji, rule.limit) for c in group]
    return out


def render_candidates(candidates: Mapping[str, list], size: int, progress: bool = False) -> None:
    from tqdm import tqdm

    flat = [c for cls in sorted(candidates) for c in candidates[cls]]
    for c in tqdm(flat, desc="rendering", unit="img", file=sys.stderr, disable=None if progress else True,
                  leave=False):
        c.image = S.rasterise(c.payload, size, what=f"{S.SOURCES_BY_STYLE[c.style].describe()}:{c.member}")
        c.payload = None                                # free the source bytes


# -- duplicates and the held-out split ----------------------------------------------------------------

class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def drop_exact_duplicates(candidates: Mapping[str, list]) -> tuple[dict[str, list], list[dict], list[tuple]]:
    """Drop images whose pixels equal an earlier image (class order, then emoji, then style order).

    Returns (kept candidates, dropped records, (class, unified, unified) links between the emoji involved,
    for grouping). Across classes the first class keeps it (a duplicate pair cannot then straddle a split).
    """
    seen: dict[bytes, Candidate] = {}
    kept: dict[str, list] = {}
    dropped, links = [], []
    for cls in sorted(candidates):
        kept[cls] = []
        for c in candidates[cls]:
            key = hashlib.sha256(c.image.tobytes()).digest()
            first = seen.get(key)
            if first is None:
                seen[key] = c
                kept[cls].append(c)
                continue
            dropped.append({"class": cls, "style": c.style, "unified": c.unified,
                            "short_name": c.entry.get("short_name"), "same_as": f"{first.cls}/{first.style}_"
                                                                                f"{first.unified}"})
            if first.cls == cls and first.unified != c.unified:
                links.append((cls, first.unified, c.unified))
    return kept, dropped, links


def psnr_matrix(images: list):
    """Pairwise PSNR (dB, uint8 RGB) of equally sized PIL images, as an (N, N) numpy array (inf on equal)."""
    import numpy as np

    x = np.stack([np.asarray(im, dtype=np.float64).reshape(-1) for im in images])      # (N, D)
    sq = (x * x).sum(1)
    mse = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0) / x.shape[1]    # (N, N)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def duplicate_groups(kept: Mapping[str, list], links: list[tuple], threshold_db: float = NEAR_DUPLICATE_DB
                     ) -> dict[str, list[list[str]]]:
    """Class -> groups of unified ids (sorted; groups sorted by first id) that must share a split.

    Two emoji are linked if an exact duplicate of one was dropped for the other, or if any two of their
    images (any styles) are within `threshold_db` PSNR. Groups are the transitive closure.
    """
    import numpy as np

    out: dict[str, list[list[str]]] = {}
    for cls in sorted(kept):
        uf = _UnionFind()
        for c in kept[cls]:
            uf.find(c.unified)
        for link_cls, a, b in links:
            if link_cls == cls:
                uf.union(a, b)
        cands = kept[cls]
        if len(cands) > 1:
            close = np.argwhere(np.triu(psnr_matrix([c.image for c in cands]) >= threshold_db, k=1))
            for i, j in close:
                if cands[i].unified != cands[j].unified:
                    uf.union(cands[i].unified, cands[j].unified)
        groups: dict[str, list[str]] = {}
        for u in uf.parent:
            groups.setdefault(uf.find(u), []).append(u)
        out[cls] = sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])
    return out


def split_rank(unified: str, salt: str = SPLIT_SALT) -> str:
    """The deterministic draw order of an emoji: sha256 of the salted unified id (hex, compared as text)."""
    return hashlib.sha256(f"{salt}:{unified}".encode("ascii")).hexdigest()


def heldout_target(n_emoji: int, fraction: float = HELDOUT_FRACTION) -> int:
    """round(fraction * n), but at least 1 and at most n - 1 once a class has 2 emoji; 0 below that."""
    if n_emoji < 2:
        return 0
    return min(max(1, round(fraction * n_emoji)), n_emoji - 1)


def split_groups(groups: list[list[str]], n_emoji: int | None = None, *, fraction: float = HELDOUT_FRACTION,
                 salt: str = SPLIT_SALT) -> set[str]:
    """The held-out unified ids of one class: whole groups, drawn in split_rank order of each group's first
    id, until at least heldout_target(n) emoji are held out. A group that would leave no training emoji is
    passed over."""
    n = n_emoji if n_emoji is not None else sum(len(g) for g in groups)
    target = heldout_target(n, fraction)
    held: set[str] = set()
    for group in sorted(groups, key=lambda g: split_rank(min(g), salt)):
        if len(held) >= target:
            break
        if n - len(held) - len(group) >= 1:
            held.update(group)
    return held


# -- the output folder ----------------------------------------------------------------------------------

def _check_emoji_size(image_size: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 64:
        raise NitroGenInputError(f"image_size {image_size!r} must be an integer in 8..64")


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _written_by_us(out: Path) -> bool:
    manifest = _read_manifest(out)
    return manifest is not None and manifest.get("generator") == GENERATOR


def _corpus_files(out: Path) -> set[str]:
    files = set()
    for split in SPLITS:
        if (out / split).is_dir():
            files.update(p.relative_to(out).as_posix() for p in (out / split).rglob("*") if p.is_file())
    return files


def is_complete(out: Path, build_key: str | None = None) -> bool:
    """Our v2 manifest, the same build (if given), LICENSE.txt, and exactly the listed images on disk."""
    manifest = _read_manifest(out)
    if manifest is None or manifest.get("generator") != GENERATOR or manifest.get("manifest_version") != 2:
        return False
    if build_key is not None and manifest.get("build_key") != build_key:
        return False
    try:
        listed = {rec["file"] for rec in manifest["images"]}
    except (KeyError, TypeError):
        return False
    return (out / "LICENSE.txt").is_file() and _corpus_files(out) == listed


def _check_out_dir(out: Path, force: bool, build_key: str | None = None) -> bool:
    """Refuse a file, or a non-empty folder unless it is ours; True if it already holds this exact build.

    Called before any download. --force rebuilds one of ours; a foreign folder is never deleted.
    """
    if out.exists() and not out.is_dir():
        raise NitroGenInputError(f"output folder {str(out)!r} is an existing file; give a folder path")
    try:
        non_empty = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise NitroGenInputError(f"cannot read the output folder {str(out)!r}: {exc.strerror or exc}") from None
    if not non_empty:
        return False
    if not _written_by_us(out):
        # --force deletes the folder, so only ever delete one this function wrote.
        raise NitroGenInputError(
            f"output folder {str(out)!r} is not empty and has no {MANIFEST} from `data emoji`; refusing to "
            f"use or delete it, even with --force; choose a new or empty folder")
    if force:
        return False
    if build_key is not None and is_complete(out, build_key):
        return True
    raise NitroGenInputError(f"output folder {str(out)!r} holds an incomplete or different `data emoji` build; "
                             f"pass --force to replace it")


def build_key(rules: Mapping[str, EmojiRule], styles: tuple[str, ...], image_size: int) -> str:
    """What determines the corpus: pinned sources, rules, size and split settings (not the renderer version)."""
    spec = {"manifest_version": MANIFEST_VERSION, "image_size": image_size, "salt": SPLIT_SALT,
            "fraction": HELDOUT_FRACTION, "near_duplicate_db": NEAR_DUPLICATE_DB,
            "sources": [[s.style, s.package, s.version, s.integrity] for s in S.needed_sources(styles)],
            "styles": list(styles), "rules": {k: rules[k].to_json() for k in sorted(rules)}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _file_name(c: Candidate) -> str:
    return f"{c.split}/{c.cls}/{c.style}_{c.unified}.png"


def _counts(kept: Mapping[str, list], styles: tuple[str, ...]) -> dict:
    by_class = {cls: {sp: sum(c.split == sp for c in kept[cls]) for sp in SPLITS} for cls in sorted(kept)}
    by_style = {st: {sp: sum(c.split == sp and c.style == st for cls in kept for c in kept[cls]) for sp in SPLITS}
                for st in styles}
    by_class_style = {cls: {st: {sp: sum(c.split == sp and c.style == st for c in kept[cls]) for sp in SPLITS}
                            for st in styles} for cls in sorted(kept)}
    emoji = {cls: {sp: len({c.unified for c in kept[cls] if c.split == sp}) for sp in SPLITS} for cls in sorted(kept)}
    return {"splits": {sp: sum(v[sp] for v in by_class.values()) for sp in SPLITS}, "by_class": by_class,
            "by_style": by_style, "by_class_style": by_class_style, "emoji_by_class": emoji}


def build_corpus(tarballs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike, *,
                 classes: str | Mapping[str, EmojiRule] = DEFAULT_PRESET, styles=None, force: bool = False,
                 image_size: int = 32, progress: bool = False) -> dict:
    """Verify each style's tarball against its pinned SRI, then write the split corpus into out_dir.

    `tarballs` maps style -> tarball path for every source in `emoji_sources.needed_sources(styles)`.
    The folder is built next to out_dir and moved into place at the end, so a failure leaves no half tree.
    Returns a summary (the manifest without per-image records).
    """
    if isinstance(classes, str):
        preset_name, rules = classes, resolve_class_preset(classes)
    else:
        preset_name, rules = "custom", dict(classes)
    styles = S.resolve_styles(styles)
    _check_emoji_size(image_size)
    out = Path(out_dir).expanduser()
    key = build_key(rules, styles, image_size)
    if _check_out_dir(out, force, key):
        return _already_done(out)
    S.require_svg_renderer(styles)

    archives: dict[str, S.Archive] = {}
    integrities: dict[str, str] = {}
    for source in S.needed_sources(styles):
        if source.style not in tarballs:
            raise NitroGenInputError(f"no tarball given for style {source.style!r} ({source.describe()})")
        path = Path(tarballs[source.style])
        if not path.is_file():
            raise NitroGenInputError(f"tarball {str(path)!r} does not exist")
        data = S.read_capped(path)
        integrities[source.style] = check_integrity(data, source.integrity, what=str(path))   # before reading
        S.log(progress, f"reading {source.describe()}")
        archives[source.style] = S.read_archive(source, data, what=str(path))
        del data

    catalogue = archives[S.CATALOGUE_STYLE].emoji
    names = archives[S.NAMES_STYLE].names if S.NAMES_STYLE in archives else None
    selected = select_emoji(catalogue, rules)
    candidates = gather_candidates(selected, rules, styles, archives, names)
    archives.clear()
    render_candidates(candidates, image_size, progress)
    kept, dropped, links = drop_exact_duplicates(candidates)
    groups = duplicate_groups(kept, links)
    for cls in kept:
        emoji = {c.unified for c in kept[cls]}
        present = [[u for u in g if u in emoji] for g in groups[cls]]
        held = split_groups([g for g in present if g], len(emoji))
        for c in kept[cls]:
            c.split = "heldout" if c.unified in held else "train"
        for split in SPLITS:
            if not any(c.split == split for c in kept[cls]):
                raise NitroGenInputError(f"class {cls!r} has {len(emoji)} distinct emoji; it needs at least 2 "
                                         f"so that both splits get one")
    manifest = _manifest(kept, dropped, groups, rules, styles, image_size, preset_name, key, integrities)
    _write_tree(out, kept, manifest, styles, force)
    return _summary(manifest, out)


def _manifest(kept, dropped, groups, rules, styles, image_size, preset_name, key, integrities) -> dict:
    import PIL

    counts = _counts(kept, styles)
    sources = []
    for source in S.needed_sources(styles):
        d = source.to_json()
        d["integrity_checked"] = integrities[source.style]
        d["role"] = ("style" if source.style in styles else "") + \
            (" + catalogue (emoji.json)" if source.style == S.CATALOGUE_STYLE else "") + \
            (" + CLDR names (data/openmoji.csv)" if source.style == S.NAMES_STYLE and
             any(S.SOURCES_BY_STYLE[s].kind in ("slug", "iconify") for s in styles) else "")
        d["role"] = d["role"].lstrip(" +")
        sources.append(d)
    images = [{"file": _file_name(c), "class": cls, "style": c.style, "unified": c.unified,
               "short_name": c.entry.get("short_name"), "split": c.split, "source": c.member}
              for cls in sorted(kept) for c in sorted(kept[cls], key=lambda c: (c.split, c.style, c.unified))]
    heldout_emoji = {cls: sorted({c.unified for c in kept[cls] if c.split == "heldout"}) for cls in sorted(kept)}
    return {
        "generator": GENERATOR,
        "manifest_version": MANIFEST_VERSION,
        "layout": "DIR/{train,heldout}/<class>/<style>_<unified>.png; labels = classes in sorted order",
        "build_key": key,
        # One-line provenance for readers of manifest v1 (bench judge's metadata); the details are in "sources".
        "source": {"package": "+".join(s["package"] for s in sources), "version": "emoji32-v2",
                   "integrity": sri_of("\n".join(s["integrity"] for s in sources).encode())},
        "sources": sources,
        "styles": list(styles),
        "image_size": image_size,
        "image_mode": "RGB",
        "settings": {
            "alpha": "composited onto white (255, 255, 255)",
            "resample": "Pillow LANCZOS (antialiased) from each package's raster, or from SVG rendered at "
                        f"{S.SVG_RENDER_FACTOR}x the target size",
            "svg_renderer": S.svg_renderer_version(),
            "pillow": PIL.__version__,
            "class_preset": preset_name,
            "limit": "distinct emoji with an image in an allowed style, evenly spaced in emoji order",
            "dedupe": "pixel-identical images dropped; the first in class, emoji, style order is kept",
            "split": {"by": "emoji (unified code point sequence); every style of an emoji on one side",
                      "fraction": HELDOUT_FRACTION, "salt": SPLIT_SALT,
                      "rule": "per class: groups drawn in order of sha256('<salt>:<first unified id>') until "
                              "round(fraction * emoji) are held out (at least 1, never all)",
                      "groups": f"emoji linked by an exact duplicate or by two images at {NEAR_DUPLICATE_DB} "
                                f"dB PSNR or closer (any styles) share a split"},
        },
        "counts": counts,
        "total": sum(len(v) for v in kept.values()),
        "classes": [
            {"label": i, "name": cls, "rule": rules[cls].to_json(), "note": rules[cls].note,
             "emoji": len({c.unified for c in kept[cls]}), "images": counts["by_class"][cls],
             "heldout_emoji": heldout_emoji[cls],
             "groups": [g for g in groups[cls] if len(g) > 1]}
            for i, cls in enumerate(sorted(kept))
        ],
        "duplicates_dropped": dropped,
        "images": images,
    }


def _write_tree(out: Path, kept, manifest: dict, styles, force: bool) -> None:
    # Not mkdtemp: that makes the folder 0700, and the final folder should get the user's umask.
    tmp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for cls in kept:
            for c in kept[cls]:
                path = tmp / _file_name(c)
                path.parent.mkdir(parents=True, exist_ok=True)
                c.image.save(path, format="PNG")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
        (tmp / "LICENSE.txt").write_text(license_note(styles), "utf-8")
        if out.exists():
            _check_out_dir(out, force)          # re-check right before deleting
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        raise NitroGenInputError(f"cannot write the output folder {str(out)!r}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def license_note(styles) -> str:
    lines = ["Images in this folder are downsampled (32x32, composited onto white) renderings of the emoji sets",
             "below, made by NitroGen's `python -m nitrogen_core data emoji`. Each keeps its own licence.", ""]
    for s in S.needed_sources(tuple(styles)):
        if s.style not in styles:
            continue
        lines += [f"{s.style}: {s.title}", f"  {s.attribution}", f"  images: {s.image_license}; package "
                  f"{s.describe()} ({s.package_license}); {s.upstream}", ""]
    lines += ["CC BY 4.0 / CC BY-SA 4.0 require attribution (above). The CC BY-SA 4.0 sets (OpenMoji, EmojiOne 1):",
              "these downsampled images are adaptations, so if you share them, share them under CC BY-SA 4.0.", ""]
    return "\n".join(lines)


def _already_done(out: Path) -> dict:
    manifest = _read_manifest(out) or {}
    summary = _summary(manifest, out)
    summary["already_complete"] = True
    return summary


def _summary(manifest: Mapping, out: Path) -> dict:
    summary = {k: v for k, v in manifest.items() if k not in ("images", "classes", "duplicates_dropped", "sources")}
    summary["out_dir"] = str(out)
    summary["classes"] = {c["name"]: c["images"] for c in manifest.get("classes", [])}
    summary["sources"] = [f"{s['package']}@{s['version']}" for s in manifest.get("sources", [])]
    summary.setdefault("already_complete", False)
    return summary


def fetch_emoji(out_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                classes: str | Mapping[str, EmojiRule] = DEFAULT_PRESET, styles=None, force: bool = False,
                progress: bool = True, image_size: int = 32) -> dict:
    """Download (or reuse) the pinned tarballs and write the split corpus. Returns a summary dict."""
    start = time.perf_counter()
    rules = resolve_class_preset(classes) if isinstance(classes, str) else dict(classes)
    styles = S.resolve_styles(styles)
    _check_emoji_size(image_size)
    out = Path(out_dir).expanduser()
    if _check_out_dir(out, force, build_key(rules, styles, image_size)):      # refuse before spending a download
        summary = _already_done(out)
        summary.update(downloaded=[], seconds=time.perf_counter() - start)
        return summary
    S.require_svg_renderer(styles)
    tarballs, downloaded = {}, []
    for source in S.needed_sources(styles):
        path, fresh = S.ensure_tarball(source, cache_dir, progress=progress)
        tarballs[source.style] = path
        if fresh:
            downloaded.append(source.describe())
    summary = build_corpus(tarballs, out, classes=classes, styles=styles, force=force, image_size=image_size,
                           progress=progress)
    summary.update(downloaded=downloaded, seconds=time.perf_counter() - start)
    return summary


# -- ImageFolder loading (users' own data) and the split corpus -------------------------------------

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
    styles:  each image's art style (emoji corpus only; empty for a plain ImageFolder)
    split:   'train' / 'heldout' for a split of the emoji corpus, None for a plain ImageFolder
    """

    images: Any
    labels: Any
    classes: tuple[str, ...]
    files: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    split: str | None = None

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 3 or self.labels.shape != (n,):
            raise ValueError(f"images {tuple(self.images.shape)} / labels {tuple(self.labels.shape)} do not match")
        if self.styles and len(self.styles) != n:
            raise ValueError(f"{len(self.styles)} styles for {n} images")

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


def _check_image_size(image_size: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise NitroGenInputError(f"image_size {image_size!r} must be an integer in 1..{MAX_IMAGE_SIZE}")


def _check_root(root: Path) -> None:
    if not root.exists():
        raise NitroGenInputError(f"dataset folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NitroGenInputError(f"dataset path {str(root)!r} is not a folder; give a folder of class subfolders")


def _list_classes(root: Path) -> list[Path]:
    try:
        return _class_dirs(root)
    except OSError as exc:
        raise NitroGenInputError(f"cannot list dataset folder {str(root)!r}: {exc.strerror or exc}") from None


def _collect(root: Path, class_dirs: list[Path], max_images: int) -> list[tuple[Path, int]]:
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
    return files


def _decode(root: Path, files: list[tuple[Path, int]], image_size: int):
    """Check sizes from headers, then decode: -> (images uint8 (N, 3, S, S), labels int64 (N,))."""
    import numpy as np
    import torch

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
    return images, labels


def is_split_corpus(root: str | os.PathLike) -> bool:
    """A `data emoji` v2 corpus root: our manifest (version 2) and a train/ folder."""
    root = Path(root).expanduser()
    manifest = _read_manifest(root) if root.is_dir() else None
    return (manifest is not None and manifest.get("generator") == GENERATOR
            and manifest.get("manifest_version") == MANIFEST_VERSION and (root / "train").is_dir())


def load_image_folder(path: str | os.PathLike, image_size: int = 32, *, max_images: int = MAX_IMAGES) -> ImageDataset:
    """Load `path/<class>/<image>` fully into memory as an ImageDataset.

    Classes are the non-hidden subfolders of `path`, sorted by name (label i = i-th folder). Files directly
    in `path` (e.g. manifest.json) and nested folders are ignored. Images (.png .jpg .jpeg .webp .bmp, any
    case) are converted to RGB with transparency composited onto white. Every image must be square and
    exactly image_size x image_size: NitroGen never resizes your data silently.

    A `data emoji` corpus root (train/ + heldout/ + its manifest.json) loads its TRAIN split, as
    `load_split(path, "train")`: train/heldout are never classes, and held-out emoji are never trained on by
    accident. A folder with train/ and heldout/ but no such manifest is refused rather than guessed at.
    """
    _check_image_size(image_size)
    root = Path(path).expanduser()
    _check_root(root)
    if is_split_corpus(root):
        return load_split(root, "train", image_size, max_images=max_images)
    class_dirs = _list_classes(root)
    if {d.name for d in class_dirs} >= set(SPLITS):
        raise NitroGenInputError(
            f"dataset folder {str(root)!r} has {'/'.join(SPLITS)} subfolders but no {MANIFEST} from `data emoji` "
            f"v2; refusing to treat the splits as classes; give {str(root / 'train')!r} to load it as an ImageFolder")
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:1]
        hint = f" (found loose images such as {loose[0]!r}; move them into a class subfolder)" if loose else ""
        raise NitroGenInputError(f"dataset folder {str(root)!r} has no class subfolders; expected "
                                 f"{str(root)}/<class>/<image>.png{hint}")
    files = _collect(root, class_dirs, max_images)
    images, labels = _decode(root, files, image_size)
    return ImageDataset(images=images, labels=labels, classes=tuple(d.name for d in class_dirs),
                        files=tuple(f.relative_to(root).as_posix() for f, _ in files))


def load_split(root: str | os.PathLike, split: str = "train", image_size: int = 32, *,
               max_images: int = MAX_IMAGES) -> ImageDataset:
    """Load one split ('train' or 'heldout') of a `data emoji` corpus root.

    Labels follow the manifest's classes (sorted names), so train and heldout share label indices even if a
    split lacked a class. `files` are relative to the corpus root (e.g. 'heldout/clock/noto_1F550.png') and
    `styles` come from the manifest. Only the PNGs the manifest lists are loaded; any other file in the split
    folder is an error (a stray image would silently change the data).
    """
    _check_image_size(image_size)
    if split not in SPLITS:
        raise NitroGenInputError(f"split {split!r} is unknown; choose one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    _check_root(root)
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("generator") != GENERATOR or manifest.get("manifest_version") != 2:
        raise NitroGenInputError(f"dataset folder {str(root)!r} has no {MANIFEST} from `data emoji` v2 (made by "
                                 f"`python -m nitrogen_core data emoji --out DIR`); for a plain ImageFolder use "
                                 f"load_image_folder")
    folder = root / split
    if not folder.is_dir():
        raise NitroGenInputError(f"split folder {str(folder)!r} does not exist; the corpus is incomplete (rebuild "
                                 f"it with `data emoji --force`)")
    try:
        classes = tuple(c["name"] for c in manifest["classes"])
        records = {r["file"]: r for r in manifest["images"] if r["split"] == split}
    except (KeyError, TypeError):
        raise NitroGenInputError(f"{str(root / MANIFEST)!r} is malformed (classes/images); rebuild it with "
                                 f"`data emoji --force`") from None
    if list(classes) != sorted(classes) or not classes:
        raise NitroGenInputError(f"{str(root / MANIFEST)!r} lists classes {list(classes)}; expected sorted names")
    on_disk = {p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}
    missing, extra = sorted(set(records) - on_disk), sorted(on_disk - set(records))
    if missing or extra:
        what = f"is missing {missing[0]!r}" if missing else f"has a file the manifest does not list: {extra[0]!r}"
        raise NitroGenInputError(f"split folder {str(folder)!r} {what} ({len(missing)} missing, {len(extra)} "
                                 f"unlisted); rebuild it with `data emoji --force`")
    index = {name: i for i, name in enumerate(classes)}
    ordered = sorted(records, key=lambda f: (index.get(records[f].get("class"), -1), f))
    if not ordered:
        raise NitroGenInputError(f"split folder {str(folder)!r} has no images")
    if len(ordered) > max_images:
        raise NitroGenInputError(f"dataset folder {str(folder)!r} has more than {max_images:,} images; "
                                 f"that is more than NitroGen loads into memory")
    files = []
    for f in ordered:
        cls = records[f].get("class")
        if cls not in index or not f.startswith(f"{split}/{cls}/"):
            raise NitroGenInputError(f"{str(root / MANIFEST)!r} puts {f!r} in class {cls!r}; rebuild the corpus")
        files.append((root / f, index[cls]))
    images, labels = _decode(folder, files, image_size)
    return ImageDataset(images=images, labels=labels, classes=classes, files=tuple(ordered),
                        styles=tuple(str(records[f].get("style", "")) for f in ordered), split=split)


# -- CLI: `data emoji` --------------------------------------------------------------------------------

def add_data_parser(subparsers) -> None:
    """Register `data emoji --out DIR [--cache DIR] [--classes PRESET] [--styles LIST] [--force]`."""
    p = subparsers.add_parser("data", help="prepare training data", description="Prepare training data.")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="{emoji}")
    e = sub.add_parser(
        "emoji", help="download the pinned emoji packages and write the 32x32 corpus with a held-out split",
        description="Download the pinned npm emoji packages (one per art style), verify each one's sha512, and "
                    "write DIR/{train,heldout}/<class>/<style>_<unified>.png (32x32 RGB on white) plus "
                    "DIR/manifest.json and DIR/LICENSE.txt. About 10% of each class's emoji, in every style, go "
                    "to heldout/ and are never trained on. Rerunning on a complete folder does nothing.")
    e.add_argument("--out", required=True, help="output folder (new or empty, or an earlier `data emoji` output)")
    e.add_argument("--cache", default=None,
                   help=f"folder for the verified tarballs (default {default_cache_dir()}); put the pinned .tgz "
                        f"files there to work offline")
    e.add_argument("--classes", default=DEFAULT_PRESET,
                   help=f"class preset: {', '.join(f'{k} ({len(v)} classes)' for k, v in CLASS_PRESETS.items())} "
                        f"(default {DEFAULT_PRESET})")
    e.add_argument("--styles", default=None,
                   help=f"comma-separated art styles (default all: {','.join(S.STYLES)})")
    e.add_argument("--force", action="store_true", help="rebuild --out even if it holds a `data emoji` output")
    e.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    e.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    e.set_defaults(func=cmd_data)


def format_counts(summary: Mapping) -> str:
    """The per-class x split table and the per-style table, as printed by `data emoji`."""
    counts = summary.get("counts") or {}
    by_class, by_style = counts.get("by_class", {}), counts.get("by_style", {})
    emoji = counts.get("emoji_by_class", {})
    lines = [f"{'class':<10}{'train':>7}{'heldout':>9}{'emoji (train/heldout)':>24}"]
    for cls, v in by_class.items():
        e = emoji.get(cls, {})
        lines.append(f"{cls:<10}{v['train']:>7}{v['heldout']:>9}{e.get('train', 0):>17}/{e.get('heldout', 0)}")
    splits = counts.get("splits", {})
    lines.append(f"{'total':<10}{splits.get('train', 0):>7}{splits.get('heldout', 0):>9}")
    per = counts.get("by_class_style", {})
    styles = list(by_style)
    lines.append("")
    lines.append(f"{'style':<11}" + "".join(f"{c[:7]:>8}" for c in by_class) + f"{'train':>8}{'heldout':>9}")
    for st in styles:
        lines.append(f"{st:<11}" + "".join(f"{per[c][st]['train'] + per[c][st]['heldout']:>8}" for c in by_class)
                     + f"{by_style[st]['train']:>8}{by_style[st]['heldout']:>9}")
    return "\n".join(lines)


def cmd_data(args) -> int:
    if args.data_command != "emoji":                 # argparse allows only 'emoji'; keep the dispatch explicit
        raise NitroGenInputError(f"unknown data command {args.data_command!r}; choose emoji")
    if args.classes not in CLASS_PRESETS:
        raise NitroGenInputError(f"--classes {args.classes!r} is unknown; choose one of {sorted(CLASS_PRESETS)}")
    summary = fetch_emoji(args.out, cache_dir=args.cache, classes=args.classes, styles=args.styles, force=args.force,
                          progress=not args.quiet)
    if getattr(args, "json", False):
        out = getattr(args, "stdout", sys.stdout)
        out.write(json.dumps(summary, sort_keys=True) + "\n")
        out.flush()
        return 0
    if summary.get("already_complete"):
        print(f"{summary['out_dir']} is already complete ({summary.get('total', '?')} images, same sources and "
              f"rules); nothing to do (--force rebuilds it)")
    else:
        fetched = ", ".join(summary["downloaded"]) if summary.get("downloaded") else "all cached"
        print(f"wrote {summary['out_dir']}: {summary['total']} images of {summary['image_size']}x"
              f"{summary['image_size']} in {len(summary['classes'])} classes from {len(summary['sources'])} "
              f"packages (downloaded: {fetched}), {summary['seconds']:.1f} s")
    print(format_counts(summary))
    return 0
