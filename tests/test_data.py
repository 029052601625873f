"""nitrogen_core.train.data and .emoji_sources: ImageFolder loading, SRI checks, safe tarball reading, the
emoji class rules per style, the held-out split by emoji, the corpus writer and its manifest, load_split, all on
tiny data built here. Nothing touches the network: sockets are disabled for every test and the download helpers
are replaced by fakes where a test needs them."""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import re
import shutil
import socket
import tarfile
import urllib.error

import pytest
import torch
from PIL import Image

from nitrogen_core.errors import NitroGenInputError
from nitrogen_core.train import data as D
from nitrogen_core.train import emoji_sources as S


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def one_line_error(excinfo, *needles) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"
    return msg


def save(path, size=8, color=(255, 0, 0, 255), mode="RGBA", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = (size, size) if isinstance(size, int) else size
    im = Image.new("RGBA", (w, h), color)
    if mode != "RGBA":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


# -- load_image_folder ------------------------------------------------------------------------------

def test_load_shapes_labels_sorted_by_folder_name(tmp_path):
    for name, n in (("zebra", 2), ("apple", 3), ("mango", 1)):
        for i in range(n):
            save(tmp_path / name / f"{i}.png", color=(10 * i, 20, 30, 255))
    (tmp_path / "manifest.json").write_text("{}")           # top-level files are ignored
    (tmp_path / ".hidden").mkdir()                           # hidden folders are not classes
    (tmp_path / "apple" / "notes.txt").write_text("x")      # non-image files are ignored
    ds = D.load_image_folder(tmp_path, image_size=8)
    assert ds.classes == ("apple", "mango", "zebra")
    assert ds.images.shape == (6, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.long and ds.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert ds.files[:3] == ("apple/0.png", "apple/1.png", "apple/2.png")
    assert ds.counts() == {"apple": 3, "mango": 1, "zebra": 2}
    assert len(ds) == 6 and ds.image_size == 8
    assert ds.images[1, :, 0, 0].tolist() == [10, 20, 30]
    x = ds.as_float()
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[1, :, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1)


def test_load_converts_to_rgb_with_alpha_on_white(tmp_path):
    save(tmp_path / "a" / "clear.png", color=(255, 0, 0, 0))            # fully transparent -> white
    save(tmp_path / "a" / "half.png", color=(255, 0, 0, 128))           # half red over white
    save(tmp_path / "a" / "gray.png", color=(100, 100, 100, 255), mode="L")
    save(tmp_path / "a" / "la.png", color=(0, 0, 0, 0), mode="LA")
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "a" / "pal.png", transparency=0)                # palette, index 0 transparent
    save(tmp_path / "b" / "x.JPG", color=(0, 200, 0, 255), mode="RGB", fmt="JPEG")
    save(tmp_path / "b" / "y.webp", color=(0, 0, 200, 255), mode="RGB", fmt="WEBP")
    save(tmp_path / "b" / "z.Bmp", color=(7, 8, 9, 255), mode="RGB", fmt="BMP")
    save(tmp_path / "b" / "w.jpeg", color=(0, 200, 0, 255), mode="RGB", fmt="JPEG")
    ds = D.load_image_folder(tmp_path, image_size=8)
    px = {f: ds.images[i, :, 4, 4].tolist() for i, f in enumerate(ds.files)}
    assert px["a/clear.png"] == [255, 255, 255]
    r, g, b = px["a/half.png"]
    assert r == 255 and 125 <= g <= 129 and g == b
    assert px["a/gray.png"] == [100, 100, 100]
    assert px["a/la.png"] == [255, 255, 255]
    assert px["a/pal.png"] == [255, 255, 255]
    assert px["b/z.Bmp"] == [7, 8, 9]
    assert abs(px["b/x.JPG"][1] - 200) < 8 and px["b/x.JPG"][0] < 10
    assert abs(px["b/y.webp"][2] - 200) < 8
    assert len(ds.files) == 9


def test_load_missing_and_not_a_dir(tmp_path):
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path / "nope")
    one_line_error(e, str(tmp_path / "nope"), "does not exist")
    f = save(tmp_path / "file.png")
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(f)
    one_line_error(e, str(f), "not a folder")


def test_load_no_class_subfolders(tmp_path):
    save(tmp_path / "loose.png")
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, str(tmp_path), "no class subfolders", "loose.png")


def test_load_empty_class_folder(tmp_path):
    save(tmp_path / "a" / "0.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("not an image")
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, str(tmp_path / "b"), "no images", ".png")


def test_load_unreadable_image(tmp_path):
    save(tmp_path / "a" / "0.png")
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, str(bad), "cannot read image")


def test_load_truncated_image(tmp_path):
    good = save(tmp_path / "a" / "0.png", size=32)
    im = Image.effect_noise((32, 32), 64).convert("RGB")     # noise compresses badly, so truncation hits pixels
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert good.exists()
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=32)
    one_line_error(e, str(bad), "cannot read image")


def test_load_mixed_sizes_names_both_files(tmp_path):
    a = save(tmp_path / "a" / "0.png", size=8)
    b = save(tmp_path / "b" / "0.png", size=16)
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, "mixed image sizes", str(a), "8x8", str(b), "16x16", "resize")


def test_load_wrong_uniform_size(tmp_path):
    a = save(tmp_path / "a" / "0.png", size=16)
    save(tmp_path / "a" / "1.png", size=16)
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, str(a), "16x16", "image_size is 8", "resize them to 8x8")


def test_load_non_square(tmp_path):
    save(tmp_path / "a" / "0.png", size=8)
    bad = save(tmp_path / "a" / "1.png", size=(8, 6))
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, str(bad), "8x6", "square")


@pytest.mark.parametrize("size", [0, -1, 4096, 8.0, True, "32"])
def test_load_bad_image_size(tmp_path, size):
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=size)
    one_line_error(e, "image_size", repr(size))


def test_load_too_many_images(tmp_path):
    for i in range(3):
        save(tmp_path / "a" / f"{i}.png")
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8, max_images=2)
    one_line_error(e, str(tmp_path), "more than 2")


# -- SRI -----------------------------------------------------------------------------------------------

ABC_SHA512 = "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
ABC_SHA256 = "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


def test_sri_known_values():
    assert D.sri_of(b"abc") == ABC_SHA512
    assert D.sri_of(b"abc", "sha256") == ABC_SHA256
    assert D.check_integrity(b"abc", ABC_SHA512) == ABC_SHA512
    assert D.check_integrity(b"abc", ABC_SHA256) == ABC_SHA256
    # Several hashes: the strongest is used; unknown algorithms and options are skipped.
    assert D.check_integrity(b"abc", f"md5-xyz {ABC_SHA256} {ABC_SHA512}?foo") == ABC_SHA512
    algo, digest = D.parse_sri(S.SOURCES[0].integrity)
    assert algo == "sha512" and len(digest) == 64


def test_sri_mismatch_refused():
    with pytest.raises(NitroGenInputError) as e:
        D.check_integrity(b"abd", ABC_SHA512, what="the tarball")
    one_line_error(e, "the tarball", "integrity", ABC_SHA512, "refusing")
    # the strongest hash decides, even if a weaker one matches
    with pytest.raises(NitroGenInputError):
        D.check_integrity(b"abc", f"{ABC_SHA256} {D.sri_of(b'abd')}")


@pytest.mark.parametrize("bad", ["", "sha512", "sha512-!!!", "md5-kAFQmDzST7DWlj99KOF/cg==", "sha512-YWJj"])
def test_sri_malformed(bad):
    with pytest.raises(NitroGenInputError) as e:
        D.check_integrity(b"abc", bad)
    one_line_error(e, "SRI")


def test_every_pinned_source_has_a_sha512_pin_and_an_image_licence():
    assert len(S.SOURCES) >= 3 and len(set(S.STYLES)) == len(S.SOURCES)
    for s in S.SOURCES:
        algo, digest = D.parse_sri(s.integrity)
        assert algo == "sha512" and len(digest) == 64, s.style
        assert s.image_license and s.attribution and s.licence_evidence, s.style
        assert "apple" not in s.package and "facebook" not in s.package           # never proprietary sets
        assert re.fullmatch(r"[a-z0-9]+", s.style), s.style                      # safe in file names
    assert S.SOURCES_BY_STYLE["twemoji"].tarball_name == "emoji-datasource-twitter-16.0.0.tgz"
    scoped = S.SOURCES_BY_STYLE["fluent3d"]
    assert scoped.tarball_name == "lobehub-fluent-emoji-3d-1.1.0.tgz"
    assert scoped.tarball_url == "https://registry.npmjs.org/@lobehub/fluent-emoji-3d/-/fluent-emoji-3d-1.1.0.tgz"
    assert S.resolve_styles("twemoji, noto") == ("noto", "twemoji")              # SOURCES order
    with pytest.raises(NitroGenInputError) as e:
        S.resolve_styles("noto,apple")
    one_line_error(e, "apple", "noto")


# -- tiny fake packages: three styles of a nine-emoji catalogue ---------------------------------------

def png_bytes(color, size=16, *, shape=(16, 16)) -> bytes:
    """A transparent square canvas with a coloured centre square (`shape` may make it non-square)."""
    w, h = shape if size == 16 else (size, size)
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    for x in range(w // 4, 3 * w // 4):
        for y in range(h // 4, 3 * h // 4):
            im.putpixel((x, y), color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def entry(unified, short_name, sub, order, *, google=True, skin=False, non_qualified=None):
    e = {"unified": unified, "non_qualified": non_qualified, "image": unified.lower() + ".png",
         "short_name": short_name, "subcategory": sub, "category": "Test", "sort_order": order,
         "has_img_google": google}
    if skin:
        e["skin_variations"] = {"1F3FB": {"unified": f"{unified}-1F3FB", "image": f"{unified.lower()}-1f3fb.png",
                                          "has_img_google": True}}
    return e


CATALOGUE = [
    entry("1F600", "grinning", "face-smiling", 1),
    entry("1F603", "smiley", "face-smiling", 2),
    entry("1F604", "smile", "face-smiling", 3),                  # a near copy of smiley in the 'openmoji' style
    entry("1F601", "grin", "face-smiling", 4, skin=True),
    entry("1F602", "joy", "face-smiling", 5, google=False),      # no Noto image: comes from the other styles
    entry("23F3", "hourglass", "time", 9),
    entry("1F550", "clock1", "time", 10),
    entry("1F551", "clock2", "time", 11),
    entry("1F552", "clock3", "time", 12),
    entry("1F1EB-1F1F7", "flag-fr", "country-flag", 20),
    entry("1F1F2-1F1EB", "flag-mf", "country-flag", 21),        # same pixels as flag-fr in every style
    entry("1F1E9-1F1EA", "flag-de", "country-flag", 22),
    entry("1F1EE-1F1F9", "flag-it", "country-flag", 23),
    entry("1F1EF-1F1F5", "flag-jp", "country-flag", 24),
    entry("2764-FE0F", "heart", "heart", 30, non_qualified="2764"),
]
CLDR = {"1F600": "grinning face", "1F603": "grinning face with big eyes", "1F604": "grinning face with smiling eyes",
        "1F601": "beaming face with smiling eyes", "1F602": "face with tears of joy", "23F3": "hourglass not done",
        "1F550": "one o’clock", "1F551": "two o’clock", "1F552": "three o’clock", "1F1EB-1F1F7": "flag: France",
        "1F1F2-1F1EB": "flag: St. Martin", "1F1E9-1F1EA": "flag: Germany", "1F1EE-1F1F9": "flag: Italy",
        "1F1EF-1F1F5": "flag: Japan", "2764-FE0F": "red heart"}
BASE = {"1F600": (250, 200, 0), "1F603": (30, 120, 250), "1F604": (200, 30, 140), "1F601": (20, 220, 60),
        "1F602": (120, 60, 10), "23F3": (100, 50, 0), "1F550": (0, 0, 200), "1F551": (200, 0, 0),
        "1F552": (0, 160, 160), "1F1EB-1F1F7": (0, 60, 250), "1F1F2-1F1EB": (0, 60, 250),
        "1F1E9-1F1EA": (250, 200, 120),
        "1F1EE-1F1F9": (0, 140, 40), "1F1EF-1F1F5": (160, 0, 220), "2764-FE0F": (220, 0, 90)}
STYLE_SHIFT = {"noto": 0, "openmoji": 40, "flat": 80}


def color(style, unified):
    shift = STYLE_SHIFT[style]
    if style == "openmoji" and unified == "1F604":           # smile ~ smiley (a few levels apart) in this style
        unified, shift = "1F603", shift + 2
    return tuple(min(255, c + shift) % 256 for c in BASE[unified]) + (255,)


RULES = {
    "clock": D.EmojiRule(("time",), pattern=r"clock\d+", style_exclude=(("flat", ("clock3",)),), note="n"),
    "flag": D.EmojiRule(("country-flag",), limit=4, styles_by_subcategory=(("country-flag", ("noto", "openmoji")),),
                        note="n"),
    "smiley": D.EmojiRule(("face-smiling",), add=("heart",), add_subcategories=("heart",), note="n"),
}


def add_member(tar, name, payload: bytes, **kw):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(payload))


def write_tgz(path, members: dict) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "package/package.json", json.dumps({"name": path.stem, "license": "MIT"}).encode())
        for name, payload in members.items():
            add_member(tar, name, payload)
    return path.read_bytes()


def hostile(tar_members: dict, prefix: str) -> dict:
    """Members that must be ignored: traversal, absolute paths, nested folders (links are added separately)."""
    bad = png_bytes((1, 2, 3, 255))
    tar_members.update({"../evil.png": bad, "/abs/evil.png": bad, f"{prefix}../../../../evil.png": bad,
                        f"{prefix}sub/1f600.png": bad})
    return tar_members


def fake_packages(folder):
    """(style -> tarball path, style -> EmojiSource) for three fake styles, tarballs named like `npm pack`."""
    folder.mkdir(parents=True, exist_ok=True)
    noto = {"package/emoji.json": json.dumps(CATALOGUE).encode()}
    for e in CATALOGUE:
        if e["has_img_google"]:
            noto[f"package/img/google/64/{e['image']}"] = png_bytes(color("noto", e["unified"]))
    noto["package/img/google/64/1f601-1f3fb.png"] = png_bytes((90, 60, 30, 255))     # a skin-tone variant
    hostile(noto, "package/img/google/64/")
    csv_rows = ["emoji,hexcode,group,subgroups,annotation,skintone"]
    csv_rows += [f"x,{u},g,s,\"{n}\"," for u, n in CLDR.items()]
    csv_rows.append("x,1F601-1F3FB,g,s,\"beaming face: light skin tone\",1")
    om = {"package/data/openmoji.csv": "\n".join(csv_rows).encode("utf-8")}
    for e in CATALOGUE:
        if e["short_name"] != "clock3":                                            # openmoji lacks clock3
            stem = e["non_qualified"] or e["unified"]                              # found via non_qualified
            om[f"package/png/{stem}.png"] = png_bytes(color("openmoji", e["unified"]))
    om["package/png/1F601-1F3FB.png"] = png_bytes((90, 60, 30, 255))
    flat = {f"package/icons/flat/{S.slugify(n)}.png": png_bytes(color("flat", u)) for u, n in CLDR.items()}
    specs = {
        "noto": dict(kind="datasource", member="package/img/google/64/", datasource_set="google", source_px=16),
        "openmoji": dict(kind="codepoint", member="package/png/", case="upper", source_px=16),
        "flat": dict(kind="slug", member="package/icons/flat/", source_px=16),
    }
    paths, sources = {}, {}
    for style, members in (("noto", noto), ("openmoji", om), ("flat", flat)):
        src = S.EmojiSource(style=style, title=f"fake {style}", package=f"fake-{style}", version="1.0.0",
                            integrity="", image_license="CC0-1.0", package_license="MIT", attribution=f"{style} art",
                            upstream="https://example.invalid", licence_evidence="test", **specs[style])
        path = folder / src.tarball_name
        data = write_tgz(path, members)
        sources[style] = dataclasses.replace(src, integrity=D.sri_of(data))
        paths[style] = path
    return paths, sources


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Fake packages in tmp_path/cache, and emoji_sources patched to know only them."""
    paths, sources = fake_packages(tmp_path / "cache")
    monkeypatch.setattr(S, "SOURCES", tuple(sources.values()))
    monkeypatch.setattr(S, "SOURCES_BY_STYLE", dict(sources))
    monkeypatch.setattr(S, "STYLES", tuple(sources))
    return paths


def build(world, out, **kw):
    kw.setdefault("classes", RULES)
    kw.setdefault("image_size", 8)
    return D.build_corpus(world, out, **kw)


def by_key(manifest):
    return {(r["class"], r["style"], r["unified"]): r for r in manifest["images"]}


# -- reading archives --------------------------------------------------------------------------------------

def test_read_archive_reads_only_wanted_members(world, tmp_path):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    noto = S.read_archive(S.SOURCES_BY_STYLE["noto"], world["noto"].read_bytes())
    assert "1f600.png" in noto.images and "1f601-1f3fb.png" in noto.images
    assert not [k for k in noto.images if "/" in k or "evil" in k]
    assert noto.emoji == CATALOGUE and noto.package_json["license"] == "MIT"
    om = S.read_archive(S.SOURCES_BY_STYLE["openmoji"], world["openmoji"].read_bytes())
    assert "2764" in om.images and om.names["1F550"] == "one o’clock"
    assert "1F601-1F3FB" not in om.names                                   # skin-tone rows are not names
    flat = S.read_archive(S.SOURCES_BY_STYLE["flat"], world["flat"].read_bytes())
    assert "one-oclock" in flat.images and "flag-france" in flat.images
    assert sorted(p.name for p in tmp_path.rglob("*")) == before            # nothing extracted to disk
    assert not (tmp_path.parent / "evil.png").exists()


def test_read_archive_ignores_links_and_rejects_garbage(tmp_path):
    src = S.SOURCES_BY_STYLE["emojione2"]
    path = tmp_path / "links.tgz"
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, f"{src.member}1f600.png", png_bytes((1, 2, 3, 255)))
        add_member(tar, f"{src.member}1f999.png", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tar, f"{src.member}1f998.png", b"", type=tarfile.LNKTYPE, linkname="package/LICENSE")
        add_member(tar, f"{src.member}1f997.png", b"", type=tarfile.DIRTYPE)
    assert sorted(S.read_archive(src, path.read_bytes()).images) == ["1F600"]
    with pytest.raises(NitroGenInputError) as e:
        S.read_archive(src, b"not a tarball", what="x.tgz")
    one_line_error(e, "x.tgz", "emojione@2.2.7")
    empty = tmp_path / "empty.tgz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(NitroGenInputError) as e:
        S.read_archive(S.SOURCES_BY_STYLE["noto"], empty.read_bytes(), what="empty.tgz")
    one_line_error(e, "empty.tgz", "emoji.json")


def test_iconify_svgs_and_name_lookup():
    icons = {"width": 64, "height": 64, "icons": {
        "red-heart": {"body": "<path d='M0 0h64v64z'/>"},
        "flag-for-france": {"body": "<rect width='64' height='48'/>", "height": 48},
        "flipped": {"body": "<path/>", "hFlip": True},                      # transformations: skipped
        "../evil": {"body": "<path/>"}},
        "aliases": {"heart-alias": {"parent": "red-heart"}, "bad-alias": {"parent": "red-heart", "rotate": 1}}}
    svgs = S._iconify_svgs(icons, what="icons.json")
    assert sorted(svgs) == ["flag-for-france", "heart-alias", "red-heart"]
    assert 'viewBox="0 0 64 48"' in svgs["flag-for-france"] and svgs["heart-alias"] == svgs["red-heart"]
    src = S.SOURCES_BY_STYLE["notov1"]
    archive = S.Archive(images=svgs)
    names = {"1F1EB-1F1F7": "flag: France", "2764": "red heart"}
    hit = S.find_image(src, archive, {"unified": "1F1EB-1F1F7"}, names)
    assert hit == (f"{src.member}#flag-for-france", svgs["flag-for-france"])      # legacy 'Flag for X' name
    hit = S.find_image(src, archive, {"unified": "2764-FE0F", "non_qualified": "2764"}, names)
    assert hit[0].endswith("#red-heart")                                      # via the non-qualified sequence
    assert S.find_image(src, archive, {"unified": "1F600"}, names) is None
    assert S.slugify("eight o’clock") == "eight-oclock" and S.slugify("keycap: 0") == "keycap-0"
    assert S.code_point_keys({"unified": "0023-FE0F-20E3", "non_qualified": "0023-20E3"}) == ["0023-FE0F-20E3",
                                                                                             "0023-20E3"]


def test_rasterise_png_webp_nonsquare_and_svg():
    im = S.rasterise(png_bytes((0, 0, 255, 255)), 8)
    assert im.mode == "RGB" and im.size == (8, 8)
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((4, 4)) == (0, 0, 255)   # alpha -> white
    buf = io.BytesIO()
    Image.new("RGBA", (32, 33), (0, 200, 0, 255)).save(buf, format="WEBP", lossless=True)
    im = S.rasterise(buf.getvalue(), 8)                    # a few px off square: padded, not stretched
    assert im.size == (8, 8) and im.getpixel((4, 4)) == (0, 200, 0)
    with pytest.raises(NitroGenInputError) as e:
        S.rasterise(png_bytes((0, 0, 255, 255), shape=(16, 8)), 8, what="pkg:wide.png")
    one_line_error(e, "pkg:wide.png", "16x8", "square")
    with pytest.raises(NitroGenInputError) as e:
        S.rasterise(b"junk", 8, what="pkg:x.png")
    one_line_error(e, "pkg:x.png")
    pytest.importorskip("resvg_py")
    svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><rect x="18" y="18" width="36" ' \
          'height="36" fill="#ff0000"/></svg>'
    im = S.rasterise(svg, 8)
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((4, 4)) == (255, 0, 0)
    with pytest.raises(NitroGenInputError) as e:
        S.rasterise("<svg", 8, what="pkg:bad.svg")
    one_line_error(e, "pkg:bad.svg", "SVG")


def test_missing_svg_renderer_is_a_one_line_error_naming_the_fix(monkeypatch):
    monkeypatch.setattr(S, "svg_renderer_version", lambda: None)
    S.require_svg_renderer(("noto", "twemoji"))                               # raster styles need nothing
    with pytest.raises(NitroGenInputError) as e:
        S.require_svg_renderer(("noto", "openmoji", "fluentflat"))
    one_line_error(e, "openmoji, fluentflat", "pip install", "resvg-py", "--styles noto")


# -- class rules ---------------------------------------------------------------------------------------

def test_select_emoji_rules(world):
    sel = D.select_emoji(CATALOGUE, RULES)
    names = {k: [e["short_name"] for e in v] for k, v in sel.items()}
    assert names["smiley"] == ["grinning", "smiley", "smile", "grin", "joy", "heart"]   # + add from 'heart'
    assert names["clock"] == ["clock1", "clock2", "clock3"]                 # the pattern drops the hourglass
    assert names["flag"] == ["flag-fr", "flag-mf", "flag-de", "flag-it", "flag-jp"]   # the limit comes later
    assert all("1F3FB" not in e["unified"] for v in sel.values() for e in v)          # never skin tones
    incl = D.select_emoji(CATALOGUE, {"x": D.EmojiRule(("time", "face-smiling"), include=("clock2", "grin"))})
    assert [e["short_name"] for e in incl["x"]] == ["grin", "clock2"]


def test_rule_style_filters():
    rule = RULES["flag"]
    fr = CATALOGUE[9]
    assert rule.allows("noto", fr) and rule.allows("openmoji", fr) and not rule.allows("flat", fr)
    clock = RULES["clock"]
    assert clock.allows("flat", CATALOGUE[6]) and not clock.allows("flat", CATALOGUE[8])   # clock3 excluded
    assert clock.allows("noto", CATALOGUE[8])
    # The built-in rules: style is not a class, but a style that draws a group off-template gives none of it.
    key, flag = D.EMOJI_CLASSES["key"], D.EMOJI_CLASSES["flag"]
    arrow = {"short_name": "arrow_up", "subcategory": "arrow"}
    keycap = {"short_name": "zero", "subcategory": "keycap"}
    assert key.allows("noto", arrow) and not key.allows("openmoji", arrow) and not key.allows("emojione2", arrow)
    assert all(key.allows(s, keycap) for s in S.STYLES)
    assert not key.allows("notov1", {"short_name": "hash", "subcategory": "keycap"})
    country = {"short_name": "flag-fr", "subcategory": "country-flag"}
    assert flag.allows("noto", country) and not flag.allows("emojione2", country)    # round badges
    assert not flag.allows("fluent3d", country)                                    # not in Microsoft's release


def test_select_emoji_refuses_bad_rules(world):
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(CATALOGUE, {"a": D.EmojiRule(("time",)), "b": D.EmojiRule(("time",), pattern="clock1")})
    one_line_error(e, "1F550", "'a'", "'b'", "overlap")
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(CATALOGUE, {"a": D.EmojiRule(("time",), exclude=("hourglas",))})
    one_line_error(e, "'a'", "hourglas")
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(CATALOGUE, {"a": D.EmojiRule(("time",), add=("heartt",), add_subcategories=("heart",))})
    one_line_error(e, "'a'", "heartt")
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(CATALOGUE, {"a": D.EmojiRule(("time",), style_exclude=(("apple", ("clock1",)),))})
    one_line_error(e, "'a'", "apple")
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(CATALOGUE, {"a": D.EmojiRule(("no-such-subcategory",))})
    one_line_error(e, "'a'", "no-such-subcategory")


def test_builtin_presets_are_well_formed():
    # The bundled model's labels: these 9 names in sorted order.
    assert list(D.EMOJI_CLASSES) == ["clock", "flag", "fruit", "heart", "key", "sad", "shape", "smiley", "vehicle"]
    assert D.DEFAULT_PRESET in D.CLASS_PRESETS
    for rules in D.CLASS_PRESETS.values():
        assert set(rules) <= set(D.EMOJI_CLASSES)
        for name, rule in rules.items():
            assert name.isidentifier() and rule.subcategories and rule.note
            for _, styles in rule.styles_by_subcategory:
                assert set(styles) <= set(S.STYLES)
            json.dumps(rule.to_json())
    with pytest.raises(NitroGenInputError) as e:
        D.resolve_class_preset("nope")
    one_line_error(e, "'nope'", "emoji32")


# -- the held-out split ------------------------------------------------------------------------------------

def test_split_is_about_ten_percent_per_class_and_never_all():
    for n in (2, 5, 10, 24, 31, 47, 98, 250):
        groups = [[f"1F{i:03X}"] for i in range(n)]
        held = D.split_groups(groups)
        assert len(held) == D.heldout_target(n) == min(max(1, round(0.1 * n)), n - 1)
    assert D.heldout_target(1) == 0 and D.split_groups([["1F600"]]) == set()


def test_split_is_deterministic_and_pinned():
    ids = [f"1F6{i:02X}" for i in range(40)]
    groups = [[u] for u in ids]
    held = D.split_groups(groups)
    shuffled = groups[:]
    random.Random(0).shuffle(shuffled)
    assert D.split_groups(shuffled) == held                                  # independent of input order
    assert held == {"1F604", "1F619", "1F621", "1F624"}                      # pinned: the salt is part of the data
    assert D.split_groups(groups, salt="another salt") != held


def test_split_keeps_groups_together():
    ids = [f"1F6{i:02X}" for i in range(30)]
    pair = sorted(D.split_groups([[u] for u in ids]))[:1] + ["1F6FF"]       # a held-out emoji + a partner
    groups = [[u] for u in ids if u not in pair] + [sorted(pair)]
    held = D.split_groups(groups, 31)
    assert set(pair) <= held or not set(pair) & held
    for g in groups:
        assert set(g) <= held or not set(g) & held


def test_duplicate_groups_exact_and_near():
    def cand(unified, rgb, style="noto"):
        c = D.Candidate("c", style, {"unified": unified}, member="m", payload=None)
        c.image = Image.new("RGB", (8, 8), rgb)
        return c

    cands = {"c": [cand("A", (10, 10, 10)), cand("B", (10, 10, 10)), cand("C", (12, 10, 10), "flat"),
                   cand("D", (200, 0, 0)), cand("E", (100, 100, 100))],
             "d": [cand("F", (200, 0, 0))]}
    kept, dropped, links = D.drop_exact_duplicates(cands)
    assert [c.unified for c in kept["c"]] == ["A", "C", "D", "E"] and kept["d"] == []   # F: first class keeps it
    assert [(d["unified"], d["same_as"]) for d in dropped] == [("B", "c/noto_A"), ("F", "c/noto_D")]
    groups = D.duplicate_groups(kept, links)
    # B is A's exact copy, C is 2 levels from A (~44 dB): one group, whatever the style. E is far from all.
    assert groups["c"] == [["A", "B", "C"], ["D"], ["E"]]
    assert D.duplicate_groups(kept, links, threshold_db=60.0)["c"] == [["A", "B"], ["C"], ["D"], ["E"]]


# -- the corpus writer ---------------------------------------------------------------------------------------

def test_build_corpus_layout_manifest_and_split(world, tmp_path):
    out = tmp_path / "out"
    summary = build(world, out)
    manifest = json.loads((out / "manifest.json").read_text())
    recs = by_key(manifest)
    # Layout: train/ and heldout/ only, <class>/<style>_<unified>.png, 8x8 RGB.
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE.txt", "heldout", "manifest.json", "train"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(r["file"] for r in manifest["images"])
    for r in manifest["images"]:
        assert r["file"] == f"{r['split']}/{r['class']}/{r['style']}_{r['unified']}.png"
        with Image.open(out / r["file"]) as im:
            assert im.mode == "RGB" and im.size == (8, 8)
    assert not [f for f in files if "1F3FB" in f]                             # never skin tones
    # Styles: each gives what it draws, within the rule's style filters.
    assert {s for (c, s, u) in recs if c == "clock"} == {"noto", "openmoji", "flat"}
    assert ("clock", "openmoji", "1F552") not in recs and ("clock", "flat", "1F552") not in recs
    assert ("clock", "noto", "1F552") in recs and not [k for k in recs if k[2] == "23F3"]
    assert not [k for k in recs if k[0] == "flag" and k[1] == "flat"]
    assert ("smiley", "openmoji", "1F602") in recs and ("smiley", "noto", "1F602") not in recs
    assert ("smiley", "openmoji", "2764-FE0F") in recs                      # found by its non-qualified name
    # Flags: limit 4 of 5 (fr, mf, de, it); mf's images equal fr's, so they are dropped, and grouped with fr.
    assert {u for (c, s, u) in recs if c == "flag"} == {"1F1EB-1F1F7", "1F1E9-1F1EA", "1F1EE-1F1F9"}
    flag = manifest["classes"][1]
    assert flag["name"] == "flag" and flag["groups"] == [["1F1EB-1F1F7", "1F1F2-1F1EB"]]
    assert [d["unified"] for d in manifest["duplicates_dropped"]] == ["1F1F2-1F1EB", "1F1F2-1F1EB"]
    # The split is by emoji: every style of an emoji on one side; near copies (smiley ~ smile) on one side.
    side = {}
    for (c, s, u), r in recs.items():
        assert side.setdefault((c, u), r["split"]) == r["split"]
    assert side[("smiley", "1F603")] == side[("smiley", "1F604")]
    for c in manifest["classes"]:
        emoji = {u for (cc, u) in side if cc == c["name"]}
        held = {u for (cc, u), sp in side.items() if cc == c["name"] and sp == "heldout"}
        assert held == set(c["heldout_emoji"]) and 1 <= len(held) < len(emoji)
    # Counts: per class, per style, per split, and the same numbers in the summary.
    counts = manifest["counts"]
    assert counts["splits"]["train"] + counts["splits"]["heldout"] == manifest["total"] == len(files)
    for cls, v in counts["by_class"].items():
        assert v["train"] == sum(1 for k, r in recs.items() if k[0] == cls and r["split"] == "train")
    assert sum(v["train"] + v["heldout"] for v in counts["by_style"].values()) == len(files)
    assert sum(counts["by_class_style"]["clock"]["noto"].values()) == 3
    assert summary["classes"] == counts["by_class"] and summary["counts"] == counts
    # Sources: each pinned package with its checked integrity and licences.
    srcs = {s["style"]: s for s in manifest["sources"]}
    assert set(srcs) == {"noto", "openmoji", "flat"}
    assert srcs["noto"]["integrity"] == srcs["noto"]["integrity_checked"] == D.sri_of(world["noto"].read_bytes())
    assert srcs["noto"]["role"] == "style + catalogue (emoji.json)"
    assert srcs["openmoji"]["role"] == "style + CLDR names (data/openmoji.csv)"
    assert srcs["flat"]["image_license"] == "CC0-1.0" and srcs["flat"]["version"] == "1.0.0"
    assert manifest["classes"][0]["rule"]["pattern"] == r"clock\d+" and manifest["classes"][0]["note"]
    assert manifest["settings"]["split"]["salt"] == D.SPLIT_SALT
    assert "noto art" in (out / "LICENSE.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]   # no leftovers


def test_build_corpus_is_deterministic(world, tmp_path):
    build(world, tmp_path / "a")
    build(world, tmp_path / "b")
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab")
    assert a["images"] == b["images"] and a["counts"] == b["counts"]
    for r in a["images"]:
        assert (tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes()


def test_build_corpus_styles_subset(world, tmp_path):
    summary = build(world, tmp_path / "out", styles="noto,flat")
    assert summary["styles"] == ["noto", "flat"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {r["style"] for r in manifest["images"]} == {"noto", "flat"}
    assert [s["style"] for s in manifest["sources"]] == ["noto", "openmoji", "flat"]   # openmoji: names only
    assert manifest["sources"][1]["role"] == "CLDR names (data/openmoji.csv)"


def test_build_corpus_refuses_wrong_integrity(world, tmp_path):
    world["openmoji"].write_bytes(world["openmoji"].read_bytes() + b"tampered")
    out = tmp_path / "out"
    with pytest.raises(NitroGenInputError) as e:
        build(world, out)
    one_line_error(e, str(world["openmoji"]), "integrity", "refusing")
    assert not out.exists()


def test_build_corpus_out_dir_rules_and_idempotence(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()                                                           # an empty folder is fine
    build(world, out)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = build(world, out)                                             # complete, same build: a no-op
    assert again["already_complete"] and (out / "manifest.json").stat().st_mtime_ns == stamp
    assert again["total"] == json.loads((out / "manifest.json").read_text())["total"]
    with pytest.raises(NitroGenInputError) as e:                          # same folder, other rules
        build(world, out, classes={"clock": RULES["clock"]})
    one_line_error(e, str(out), "incomplete or different", "--force")
    build(world, out, classes={"clock": RULES["clock"]}, force=True)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["clock"]
    victim = next((out / "train" / "clock").iterdir())                   # a partial folder
    victim.unlink()
    with pytest.raises(NitroGenInputError) as e:
        build(world, out, classes={"clock": RULES["clock"]})
    one_line_error(e, str(out), "incomplete", "--force")

    foreign = tmp_path / "mine"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(NitroGenInputError) as e:
        build(world, foreign, force=True)
    one_line_error(e, str(foreign), "refusing")
    assert (foreign / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NitroGenInputError) as e:
        build(world, a_file, force=True)
    one_line_error(e, str(a_file), "file")


def test_build_corpus_needs_two_emoji_per_class(world, tmp_path):
    with pytest.raises(NitroGenInputError) as e:
        build(world, tmp_path / "out", classes={"one": D.EmojiRule(("time",), pattern="clock1", note="n"),
                                                **{k: RULES[k] for k in ("flag",)}})
    one_line_error(e, "'one'", "at least 2")


# -- loading the corpus --------------------------------------------------------------------------------------

def test_load_split_and_load_image_folder_on_a_corpus_root(world, tmp_path):
    out = tmp_path / "out"
    build(world, out)
    manifest = json.loads((out / "manifest.json").read_text())
    train, held = D.load_split(out, "train", 8), D.load_split(out, "heldout", image_size=8)
    assert train.classes == held.classes == ("clock", "flag", "smiley")      # never train/heldout as classes
    assert train.split == "train" and held.split == "heldout"
    assert len(train) == manifest["counts"]["splits"]["train"] and len(held) == manifest["counts"]["splits"]["heldout"]
    assert train.counts() == {c: v["train"] for c, v in manifest["counts"]["by_class"].items()}
    assert all(f.startswith("train/") for f in train.files) and all(f.startswith("heldout/") for f in held.files)
    recs = {r["file"]: r for r in manifest["images"]}
    for ds in (train, held):
        for f, style, label in zip(ds.files, ds.styles, ds.labels.tolist()):
            assert recs[f]["style"] == style and ds.classes[label] == recs[f]["class"]
    assert not {recs[f]["unified"] for f in train.files} & {recs[f]["unified"] for f in held.files}
    ds = train if "train/clock/noto_1F551.png" in train.files else held
    i = ds.files.index(f"{ds.split}/clock/noto_1F551.png")                 # clock2: red centre on transparent
    assert ds.images[i, :, 0, 0].tolist() == [255, 255, 255]                # transparent corner -> white
    assert max(abs(a - b) for a, b in zip(ds.images[i, :, 4, 4].tolist(), [200, 0, 0])) <= 4

    plain = D.load_image_folder(out, image_size=8)                          # a corpus root: the train split
    assert plain.files == train.files and plain.classes == train.classes and plain.split == "train"
    assert torch.equal(plain.images, train.images) and torch.equal(plain.labels, train.labels)
    as_folder = D.load_image_folder(out / "heldout", image_size=8)          # a split folder is a plain ImageFolder
    assert as_folder.classes == held.classes and len(as_folder) == len(held) and as_folder.styles == ()


def test_load_split_errors_are_one_line(world, tmp_path):
    out = tmp_path / "out"
    build(world, out)
    with pytest.raises(NitroGenInputError) as e:
        D.load_split(out, "test", 8)
    one_line_error(e, "'test'", "train", "heldout")
    with pytest.raises(NitroGenInputError) as e:
        D.load_split(out / "train", "train", 8)
    one_line_error(e, str(out / "train"), "manifest.json", "load_image_folder")
    stray = out / "heldout" / "clock" / "extra.png"
    save(stray)
    with pytest.raises(NitroGenInputError) as e:
        D.load_split(out, "heldout", 8)
    one_line_error(e, "heldout/clock/extra.png", "--force")
    stray.unlink()
    victim = next((out / "heldout").rglob("*.png"))
    victim.unlink()
    with pytest.raises(NitroGenInputError) as e:
        D.load_split(out, "heldout", 8)
    one_line_error(e, "missing", victim.relative_to(out).as_posix())
    shutil.rmtree(out / "heldout")
    with pytest.raises(NitroGenInputError) as e:
        D.load_split(out, "heldout", 8)
    one_line_error(e, str(out / "heldout"), "does not exist")
    with pytest.raises(NitroGenInputError) as e:
        D.load_split(tmp_path / "nope", "train", 8)
    one_line_error(e, "does not exist")


def test_load_image_folder_refuses_unmarked_split_folders(tmp_path):
    save(tmp_path / "train" / "a" / "0.png")
    save(tmp_path / "heldout" / "a" / "0.png")
    with pytest.raises(NitroGenInputError) as e:
        D.load_image_folder(tmp_path, image_size=8)
    one_line_error(e, str(tmp_path), "train/heldout", "manifest.json", "classes")
    assert D.load_image_folder(tmp_path / "train", image_size=8).classes == ("a",)


# -- download / cache, with a fake opener ---------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, length=True):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))} if length else {}


def fake_registry(monkeypatch, tarballs: dict, calls: list, integrity=None):
    """Registry metadata for each fake source (its pinned integrity unless overridden), then its tarball."""
    def opener(url, timeout, accept):
        calls.append(url)
        for style, data in tarballs.items():
            src = S.SOURCES_BY_STYLE[style]
            if url == src.registry_url:
                meta = {"dist": {"tarball": f"https://registry.example/{style}.tgz",
                                 "integrity": integrity or src.integrity}}
                return FakeResponse(json.dumps(meta).encode())
            if url == f"https://registry.example/{style}.tgz":
                return FakeResponse(data)
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(S, "_open_url", opener)


def test_ensure_tarball_downloads_verifies_and_caches(world, tmp_path, monkeypatch):
    data = world["noto"].read_bytes()
    src = S.SOURCES_BY_STYLE["noto"]
    calls = []
    fake_registry(monkeypatch, {"noto": data}, calls)
    cache = tmp_path / "cache2"
    path, downloaded = S.ensure_tarball(src, cache, progress=False)
    assert downloaded and path == cache / src.tarball_name and path.read_bytes() == data
    assert calls == [src.registry_url, "https://registry.example/noto.tgz"]
    assert [p.name for p in cache.iterdir()] == [src.tarball_name]        # no .part left
    calls.clear()
    path, downloaded = S.ensure_tarball(src, cache, progress=False)
    assert not downloaded and calls == []                                 # served from the cache
    path.write_bytes(data[:-1] + b"x")                                    # a damaged cache is replaced
    path, downloaded = S.ensure_tarball(src, cache, progress=False)
    assert downloaded and path.read_bytes() == data


def test_download_refuses_tampered_tarball_and_changed_registry(world, tmp_path, monkeypatch):
    src = S.SOURCES_BY_STYLE["flat"]
    fake_registry(monkeypatch, {"flat": world["flat"].read_bytes() + b"tampered"}, [])
    cache = tmp_path / "cache2"
    with pytest.raises(NitroGenInputError) as e:
        S.ensure_tarball(src, cache, progress=False)
    one_line_error(e, "integrity", "refusing")
    assert list(cache.iterdir()) == []                                    # never cached
    calls = []
    fake_registry(monkeypatch, {"flat": world["flat"].read_bytes()}, calls, integrity=D.sri_of(b"other"))
    with pytest.raises(NitroGenInputError) as e:
        S.ensure_tarball(src, cache, progress=False)
    one_line_error(e, src.integrity, "refusing")
    assert calls == [src.registry_url]                                     # the tarball was never requested


def test_fetch_emoji_offline_from_cache_then_idempotent(world, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "_open_url", lambda *a: pytest.fail("the cache holds every tarball"))
    out = tmp_path / "emoji"
    summary = D.fetch_emoji(out, cache_dir=tmp_path / "cache", classes=RULES, progress=False, image_size=8)
    assert summary["downloaded"] == [] and not summary["already_complete"]
    assert summary["sources"] == ["fake-noto@1.0.0", "fake-openmoji@1.0.0", "fake-flat@1.0.0"]
    again = D.fetch_emoji(out, cache_dir=tmp_path / "cache", classes=RULES, progress=False, image_size=8)
    assert again["already_complete"] and again["classes"] == summary["classes"]


def test_fetch_emoji_downloads_what_is_missing(world, tmp_path, monkeypatch):
    data = {s: p.read_bytes() for s, p in world.items()}
    world["flat"].unlink()
    calls = []
    fake_registry(monkeypatch, data, calls)
    summary = D.fetch_emoji(tmp_path / "emoji", cache_dir=tmp_path / "cache", classes=RULES, progress=False,
                            image_size=8)
    assert summary["downloaded"] == ["fake-flat@1.0.0"] and len(calls) == 2


@pytest.mark.parametrize("exc", [urllib.error.URLError("Name or service not known"), TimeoutError("timed out"),
                                 ConnectionResetError(104, "Connection reset by peer"),
                                 urllib.error.HTTPError("https://x", 503, "Service Unavailable", {}, None)])
def test_network_failure_is_one_line(world, tmp_path, monkeypatch, exc):
    def opener(url, timeout, accept):
        raise exc

    monkeypatch.setattr(S, "_open_url", opener)
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(tmp_path / "out", cache_dir=tmp_path / "empty-cache", classes=RULES, progress=False)
    one_line_error(e, "could not download", S.SOURCES[0].registry_url, "--cache", S.SOURCES[0].tarball_name)
    assert not (tmp_path / "out").exists()


def test_download_truncated_and_bad_url(monkeypatch):
    class Short(FakeResponse):
        def __init__(self):
            super().__init__(b"12345")
            self.headers = {"Content-Length": "10"}

    monkeypatch.setattr(S, "_open_url", lambda url, timeout, accept: Short())
    with pytest.raises(NitroGenInputError) as e:
        S.download_to("https://x.example/a.tgz", io.BytesIO(), progress=False)
    one_line_error(e, "5 of 10 bytes")
    with pytest.raises(NitroGenInputError) as e:
        S.download_to("http://x.example/a.tgz", io.BytesIO(), progress=False)
    one_line_error(e, "http://x.example/a.tgz", "https://")


def test_fetch_emoji_refuses_bad_input_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "_open_url", lambda *a: pytest.fail("downloaded before checking the input"))
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(out, cache_dir=tmp_path / "cache", progress=False)
    one_line_error(e, str(out), "not empty")
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(tmp_path / "new", cache_dir=tmp_path / "cache", classes="nope", progress=False)
    one_line_error(e, "'nope'")
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(tmp_path / "new", cache_dir=tmp_path / "cache", styles="noto,apple", progress=False)
    one_line_error(e, "apple")
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(tmp_path / "new", cache_dir=tmp_path / "cache", image_size=128, progress=False)
    one_line_error(e, "image_size", "128")


# -- CLI -----------------------------------------------------------------------------------------------------

def test_add_data_parser_and_cmd_data(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    D.add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "emoji", "--out", str(tmp_path / "o"), "--classes", "tiny", "--force",
                              "--styles", "noto,twemoji"])
    assert args.func is D.cmd_data and args.force and args.classes == "tiny" and args.cache is None
    assert args.styles == "noto,twemoji"

    seen = {}
    counts = {"splits": {"train": 3, "heldout": 1},
              "by_class": {"flag": {"train": 2, "heldout": 1}, "heart": {"train": 1, "heldout": 0}},
              "by_style": {"noto": {"train": 3, "heldout": 1}},
              "by_class_style": {"flag": {"noto": {"train": 2, "heldout": 1}},
                                 "heart": {"noto": {"train": 1, "heldout": 0}}},
              "emoji_by_class": {"flag": {"train": 2, "heldout": 1}, "heart": {"train": 1, "heldout": 0}}}

    def fake_fetch(out, **kw):
        seen.update(kw, out=out)
        return {"out_dir": str(out), "total": 4, "image_size": 32, "classes": counts["by_class"], "counts": counts,
                "sources": ["a@1"], "downloaded": [], "seconds": 0.1, "already_complete": False}

    monkeypatch.setattr(D, "fetch_emoji", fake_fetch)
    assert D.cmd_data(args) == 0
    assert seen["classes"] == "tiny" and seen["force"] is True and seen["styles"] == "noto,twemoji"
    text = capsys.readouterr().out
    assert "4 images" in text and "all cached" in text
    assert re.search(r"^flag\s+2\s+1\s+2/1$", text, re.M) and re.search(r"^noto\s+3\s+1\s+3\s+1$", text, re.M)

    args = parser.parse_args(["data", "emoji", "--out", str(tmp_path / "o"), "--classes", "nope"])
    with pytest.raises(NitroGenInputError) as e:
        D.cmd_data(args)
    one_line_error(e, "--classes 'nope'", "emoji32")
