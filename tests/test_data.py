"""nitrogen_core.train.data: ImageFolder loading, SRI checks, safe tarball reading, emoji class selection and
the emoji ImageFolder writer, all on tiny data built here. Nothing touches the network: sockets are
disabled for every test and the two download helpers are replaced by fakes where a test needs them."""
from __future__ import annotations

import argparse
import io
import json
import socket
import tarfile
import urllib.error

import pytest
import torch
from PIL import Image

from nitrogen_core.errors import NitroGenInputError
from nitrogen_core.train import data as D


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
    algo, digest = D.parse_sri(D.EXPECTED_INTEGRITY)
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


# -- a fake emoji-datasource-google tarball ---------------------------------------------------------

def png_bytes(color, size=64) -> bytes:
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    for x in range(size // 4, 3 * size // 4):
        for y in range(size // 4, 3 * size // 4):
            im.putpixel((x, y), color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def entry(unified, short_name, sub, order, *, google=True, skin=False):
    e = {"unified": unified, "image": unified.lower() + ".png", "short_name": short_name, "subcategory": sub,
         "category": "Test", "sort_order": order, "has_img_google": google}
    if skin:
        e["skin_variations"] = {"1F3FB": {"unified": f"{unified}-1F3FB", "image": f"{unified.lower()}-1f3fb.png",
                                          "has_img_google": True}}
    return e


FAKE_EMOJI = [
    entry("1F600", "grinning", "face-smiling", 3),
    entry("1F601", "grin", "face-smiling", 1, skin=True),
    entry("1F602", "joy", "face-smiling", 2, google=False),              # no Google image
    entry("1F550", "clock1", "time", 10),
    entry("1F551", "clock2", "time", 11),
    entry("23F3", "hourglass", "time", 9),
    entry("1F1E6-1F1E8", "flag-ac", "country-flag", 20),
    entry("1F1E6-1F1E9", "flag-ad", "country-flag", 21),
    entry("1F1E6-1F1EA", "flag-ae", "country-flag", 22),
    entry("1F1E6-1F1EB", "flag-af", "country-flag", 23),
    entry("1F1E6-1F1EC", "flag-ag", "country-flag", 24),                  # same pixels as flag-ac
]
COLORS = {"1F600": (250, 200, 0, 255), "1F601": (240, 190, 0, 255), "1F602": (230, 180, 0, 255),
          "1F550": (0, 0, 200, 255), "1F551": (0, 0, 210, 255), "23F3": (100, 50, 0, 255),
          "1F1E6-1F1E8": (200, 0, 0, 255), "1F1E6-1F1E9": (0, 200, 0, 255), "1F1E6-1F1EA": (0, 100, 0, 255),
          "1F1E6-1F1EB": (90, 90, 90, 255), "1F1E6-1F1EC": (200, 0, 0, 255)}
FAKE_RULES = {
    "clock": D.EmojiRule(("time",), pattern=r"clock\d+"),
    "flag": D.EmojiRule(("country-flag",), limit=2),
    "smiley": D.EmojiRule(("face-smiling",)),
}


def build_tarball(path, *, extra=None, emoji=FAKE_EMOJI):
    """A .tgz laid out like the npm package, plus hostile members that must be ignored."""
    def add(tar, name, payload: bytes, **kw):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        for k, v in kw.items():
            setattr(info, k, v)
        tar.addfile(info, io.BytesIO(payload))

    with tarfile.open(path, "w:gz") as tar:
        add(tar, "package/package.json", json.dumps({"name": "emoji-datasource-google", "version": "16.0.0",
                                                     "license": "MIT"}).encode())
        add(tar, "package/LICENSE", b"The MIT License (MIT)\nfake\n")
        add(tar, "package/emoji.json", json.dumps(emoji).encode())
        for e in emoji:
            add(tar, f"package/img/google/64/{e['image']}", png_bytes(COLORS[e["unified"]]))
        add(tar, "package/img/google/64/1f601-1f3fb.png", png_bytes((90, 60, 30, 255)))   # a skin-tone variant
        add(tar, "package/img/google/sheets/64.png", png_bytes((1, 2, 3, 255), 128))
        add(tar, "package/img/apple/64/1f600.png", png_bytes((1, 2, 3, 255)))
        # hostile / irrelevant members
        add(tar, "../evil.png", png_bytes((1, 2, 3, 255)))
        add(tar, "/abs/evil.png", png_bytes((1, 2, 3, 255)))
        add(tar, "package/img/google/64/../../../../evil.png", png_bytes((1, 2, 3, 255)))
        add(tar, "package/img/google/64/sub/1f600.png", png_bytes((1, 2, 3, 255)))
        add(tar, "package/img/google/64/1f999.png", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add(tar, "package/img/google/64/1f998.png", b"", type=tarfile.LNKTYPE, linkname="package/LICENSE")
        add(tar, "package/img/google/64/dir.png", b"", type=tarfile.DIRTYPE)
        for name, payload in (extra or {}).items():
            add(tar, name, payload)
    return path


@pytest.fixture
def fake_tgz(tmp_path):
    return build_tarball(tmp_path / "fake.tgz")


def test_read_package_reads_only_wanted_members(fake_tgz, tmp_path):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    pkg = D.read_package(fake_tgz.read_bytes())
    assert sorted(pkg.images) == sorted([e["image"] for e in FAKE_EMOJI] + ["1f601-1f3fb.png"])
    assert pkg.emoji == FAKE_EMOJI
    assert pkg.package_json["license"] == "MIT" and "MIT License" in pkg.license_text
    assert pkg.images["1f600.png"] == png_bytes(COLORS["1F600"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before        # nothing extracted to disk
    assert not (tmp_path.parent / "evil.png").exists()


def test_read_package_rejects_garbage(tmp_path):
    with pytest.raises(NitroGenInputError) as e:
        D.read_package(b"not a tarball", what="x.tgz")
    one_line_error(e, "x.tgz")
    empty = tmp_path / "empty.tgz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(NitroGenInputError) as e:
        D.read_package(empty.read_bytes(), what="empty.tgz")
    one_line_error(e, "empty.tgz", "emoji.json")


# -- class selection -------------------------------------------------------------------------------------

def test_select_emoji_rules():
    sel = D.select_emoji(FAKE_EMOJI, FAKE_RULES)
    names = {k: [e["short_name"] for e in v] for k, v in sel.items()}
    assert names["smiley"] == ["grin", "grinning"]                     # sort_order; no joy (no Google image)
    assert names["clock"] == ["clock1", "clock2"]                      # pattern drops the hourglass
    assert names["flag"] == ["flag-ac", "flag-ad", "flag-ae", "flag-af", "flag-ag"]   # limit comes later
    assert all("1F3FB" not in e["unified"] for v in sel.values() for e in v)          # no skin tones

    incl = D.select_emoji(FAKE_EMOJI, {"x": D.EmojiRule(("time", "face-smiling"), include=("clock2", "grin"))})
    assert [e["short_name"] for e in incl["x"]] == ["grin", "clock2"]
    excl = D.select_emoji(FAKE_EMOJI, {"x": D.EmojiRule(("time",), exclude=("hourglass",))})
    assert [e["short_name"] for e in excl["x"]] == ["clock1", "clock2"]
    only = D.select_emoji(FAKE_EMOJI, {"x": D.EmojiRule(("time",))}, available={"1f550.png"})
    assert [e["short_name"] for e in only["x"]] == ["clock1"]


def test_select_emoji_refuses_bad_rules():
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(FAKE_EMOJI, {"a": D.EmojiRule(("time",)), "b": D.EmojiRule(("time",), pattern="clock1")})
    one_line_error(e, "1F550", "'a'", "'b'", "overlap")
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(FAKE_EMOJI, {"a": D.EmojiRule(("time",), exclude=("hourglas",))})
    one_line_error(e, "'a'", "hourglas")
    with pytest.raises(NitroGenInputError) as e:
        D.select_emoji(FAKE_EMOJI, {"a": D.EmojiRule(("no-such-subcategory",))})
    one_line_error(e, "'a'", "no-such-subcategory")


def test_builtin_presets_are_well_formed():
    assert list(D.EMOJI_CLASSES) == sorted(D.EMOJI_CLASSES)             # dict order == label order
    assert D.DEFAULT_PRESET in D.CLASS_PRESETS
    for rules in D.CLASS_PRESETS.values():
        assert set(rules) <= set(D.EMOJI_CLASSES)
        for name, rule in rules.items():
            assert name.isidentifier() and rule.subcategories and rule.note
    with pytest.raises(NitroGenInputError) as e:
        D.resolve_class_preset("nope")
    one_line_error(e, "'nope'", "emoji32")


def test_emoji_to_rgb_composites_then_downsamples():
    im = D.emoji_to_rgb(png_bytes((0, 0, 255, 255)), 32)
    assert im.mode == "RGB" and im.size == (32, 32)
    assert im.getpixel((0, 0)) == (255, 255, 255)                       # transparent -> white, not black
    assert im.getpixel((16, 16)) == (0, 0, 255)
    with pytest.raises(NitroGenInputError) as e:
        D.emoji_to_rgb(b"junk", 32, what="package/img/google/64/x.png")
    one_line_error(e, "package/img/google/64/x.png")


# -- writing the ImageFolder -----------------------------------------------------------------------------

def test_write_emoji_dataset_roundtrip(fake_tgz, tmp_path):
    out = tmp_path / "out"
    integrity = D.sri_of(fake_tgz.read_bytes())
    summary = D.write_emoji_dataset(fake_tgz, out, integrity=integrity, classes=FAKE_RULES)
    # flag: 5 candidates, flag-ag is a pixel duplicate of flag-ac, then 2 of 4 evenly spaced: ac, ae.
    assert summary["classes"] == {"clock": 2, "flag": 2, "smiley": 2} and summary["total"] == 6
    assert sorted(p.name for p in (out / "flag").iterdir()) == ["1F1E6-1F1E8.png", "1F1E6-1F1EA.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["integrity"] == integrity and manifest["source"]["version"] == "16.0.0"
    assert manifest["source"]["package_license"] == "MIT" and manifest["source"]["image_license"] == "Apache-2.0"
    assert manifest["image_size"] == 32
    flag = manifest["classes"][1]
    assert (flag["name"], flag["label"], flag["count"], flag["candidates"], flag["duplicates_dropped"]) == \
        ("flag", 1, 2, 5, 1)
    assert "Apache-2.0" in (out / "LICENSE.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]   # no leftovers

    ds = D.load_image_folder(out, image_size=32)
    assert ds.classes == ("clock", "flag", "smiley") and ds.counts() == summary["classes"]
    assert ds.images[0, :, 0, 0].tolist() == [255, 255, 255]             # corner: transparent -> white
    assert ds.images[0, :, 16, 16].tolist() == [0, 0, 200]                # clock1's blue square


def test_write_emoji_dataset_refuses_wrong_integrity(fake_tgz, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NitroGenInputError) as e:
        D.write_emoji_dataset(fake_tgz, out, integrity=D.sri_of(b"something else"), classes=FAKE_RULES)
    one_line_error(e, str(fake_tgz), "integrity", "refusing")
    assert not out.exists()


def test_write_emoji_dataset_out_dir_rules(fake_tgz, tmp_path):
    integrity = D.sri_of(fake_tgz.read_bytes())
    out = tmp_path / "out"
    out.mkdir()                                                           # empty folder is fine
    D.write_emoji_dataset(fake_tgz, out, integrity=integrity, classes=FAKE_RULES)
    with pytest.raises(NitroGenInputError) as e:
        D.write_emoji_dataset(fake_tgz, out, integrity=integrity, classes=FAKE_RULES)
    one_line_error(e, str(out), "not empty", "--force")
    (out / "stale").mkdir()
    D.write_emoji_dataset(fake_tgz, out, integrity=integrity, classes={"clock": FAKE_RULES["clock"]}, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE.txt", "clock", "manifest.json"]

    foreign = tmp_path / "mine"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(NitroGenInputError) as e:
        D.write_emoji_dataset(fake_tgz, foreign, integrity=integrity, classes=FAKE_RULES, force=True)
    one_line_error(e, str(foreign), "refusing to delete")
    assert (foreign / "keep.txt").read_text() == "precious"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NitroGenInputError) as e:
        D.write_emoji_dataset(fake_tgz, a_file, integrity=integrity, classes=FAKE_RULES, force=True)
    one_line_error(e, str(a_file), "file")


# -- download / cache, with a fake opener ---------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, length=True):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))} if length else {}


def fake_registry(monkeypatch, tarball: bytes, *, integrity: str, calls: list):
    meta = json.dumps({"dist": {"tarball": "https://registry.example/pkg.tgz", "integrity": integrity}}).encode()

    def opener(url, timeout, accept):
        calls.append(url)
        return FakeResponse(meta if url == D.REGISTRY_URL else tarball)

    monkeypatch.setattr(D, "_open_url", opener)


def test_ensure_tarball_downloads_verifies_and_caches(fake_tgz, tmp_path, monkeypatch):
    data = fake_tgz.read_bytes()
    monkeypatch.setattr(D, "EXPECTED_INTEGRITY", D.sri_of(data))
    calls = []
    fake_registry(monkeypatch, data, integrity=D.sri_of(data), calls=calls)
    cache = tmp_path / "cache"
    path, downloaded = D.ensure_tarball(cache, progress=False)
    assert downloaded and path == cache / D.TARBALL_NAME and path.read_bytes() == data
    assert calls == [D.REGISTRY_URL, "https://registry.example/pkg.tgz"]
    assert [p.name for p in cache.iterdir()] == [D.TARBALL_NAME]          # no .part left

    calls.clear()
    path, downloaded = D.ensure_tarball(cache, progress=False)
    assert not downloaded and calls == []                                 # served from the cache

    path.write_bytes(data[:-1] + b"x")                                    # a damaged cache is replaced
    path, downloaded = D.ensure_tarball(cache, progress=False)
    assert downloaded and path.read_bytes() == data


def test_fetch_emoji_end_to_end_offline(fake_tgz, tmp_path, monkeypatch):
    data = fake_tgz.read_bytes()
    monkeypatch.setattr(D, "EXPECTED_INTEGRITY", D.sri_of(data))
    fake_registry(monkeypatch, data, integrity=D.sri_of(data), calls=[])
    summary = D.fetch_emoji(tmp_path / "emoji", cache_dir=tmp_path / "cache", classes=FAKE_RULES, progress=False)
    assert summary["downloaded"] and summary["classes"] == {"clock": 2, "flag": 2, "smiley": 2}
    assert (tmp_path / "emoji" / "smiley" / "1F600.png").is_file()


def test_download_refuses_tampered_tarball(fake_tgz, tmp_path, monkeypatch):
    data = fake_tgz.read_bytes()
    monkeypatch.setattr(D, "EXPECTED_INTEGRITY", D.sri_of(data))
    fake_registry(monkeypatch, data + b"tampered", integrity=D.sri_of(data), calls=[])
    cache = tmp_path / "cache"
    with pytest.raises(NitroGenInputError) as e:
        D.ensure_tarball(cache, progress=False)
    one_line_error(e, "integrity", "refusing")
    assert list(cache.iterdir()) == []                                    # never cached


def test_download_refuses_changed_registry_integrity(fake_tgz, tmp_path, monkeypatch):
    data = fake_tgz.read_bytes()
    calls = []
    fake_registry(monkeypatch, data, integrity=D.sri_of(data), calls=calls)   # != the pinned constant
    with pytest.raises(NitroGenInputError) as e:
        D.ensure_tarball(tmp_path / "cache", progress=False)
    one_line_error(e, D.EXPECTED_INTEGRITY, "refusing")
    assert calls == [D.REGISTRY_URL]                                       # the tarball was never requested


@pytest.mark.parametrize("exc", [urllib.error.URLError("Name or service not known"), TimeoutError("timed out"),
                                 ConnectionResetError(104, "Connection reset by peer"),
                                 urllib.error.HTTPError(D.REGISTRY_URL, 503, "Service Unavailable", {}, None)])
def test_network_failure_is_one_line(tmp_path, monkeypatch, exc):
    def opener(url, timeout, accept):
        raise exc

    monkeypatch.setattr(D, "_open_url", opener)
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    one_line_error(e, "could not download", D.REGISTRY_URL, "--cache")
    assert not (tmp_path / "out").exists()


def test_download_truncated_and_bad_url(tmp_path, monkeypatch):
    class Short(FakeResponse):
        def __init__(self):
            super().__init__(b"12345")
            self.headers = {"Content-Length": "10"}

    monkeypatch.setattr(D, "_open_url", lambda url, timeout, accept: Short())
    with pytest.raises(NitroGenInputError) as e:
        D.download_to("https://x.example/a.tgz", io.BytesIO(), progress=False)
    one_line_error(e, "5 of 10 bytes")
    with pytest.raises(NitroGenInputError) as e:
        D.download_to("http://x.example/a.tgz", io.BytesIO(), progress=False)
    one_line_error(e, "http://x.example/a.tgz", "https://")


def test_fetch_emoji_refuses_out_dir_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_open_url", lambda *a: pytest.fail("downloaded before checking --out"))
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(out, cache_dir=tmp_path / "cache", progress=False)
    one_line_error(e, str(out), "not empty")
    with pytest.raises(NitroGenInputError) as e:
        D.fetch_emoji(tmp_path / "new", cache_dir=tmp_path / "cache", classes="nope", progress=False)
    one_line_error(e, "'nope'")


# -- CLI registration -------------------------------------------------------------------------------------

def test_add_data_parser_and_cmd_data(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    D.add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "emoji", "--out", str(tmp_path / "o"), "--classes", "tiny", "--force"])
    assert args.func is D.cmd_data and args.force and args.classes == "tiny" and args.cache is None

    seen = {}

    def fake_fetch(out, **kw):
        seen.update(kw, out=out)
        return {"out_dir": str(out), "total": 3, "image_size": 32, "classes": {"flag": 1, "heart": 1, "smiley": 1},
                "downloaded": False, "seconds": 0.1}

    monkeypatch.setattr(D, "fetch_emoji", fake_fetch)
    assert D.cmd_data(args) == 0
    assert seen["classes"] == "tiny" and seen["force"] is True
    assert "3 images" in capsys.readouterr().out

    args = parser.parse_args(["data", "emoji", "--out", str(tmp_path / "o"), "--classes", "nope"])
    with pytest.raises(NitroGenInputError) as e:
        D.cmd_data(args)
    one_line_error(e, "--classes 'nope'", "emoji32")
