"""Real-data loaders on ../shared/data (skipped where it is absent), .bin packs, downloads and bad input."""

from __future__ import annotations

import http.server
import importlib.util
import io
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from ecl.data import (
    LANDMARK68_NAMES,
    LFW,
    CelebA,
    FaceImages,
    ImageFolderFaces,
    UnsafePickleError,
    build_dataset,
    build_pairs,
    five_from_68,
    jittered,
    lfw_pairs,
    load_bin,
    read_landmarks_5pt,
    read_lfw_pairs,
    safe_load_bin,
)
from ecl.data.download import ChecksumError, download, extract, sha256sum

REPO = Path(__file__).resolve().parents[1]


def _jpeg(size=(40, 30), colour=(200, 120, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _inside_fraction(item) -> float:
    lm = item["landmarks"]
    ok = torch.isfinite(lm).all(1)
    s = item["image"].shape[-1]
    inside = ok & (lm >= 0).all(1) & (lm < s).all(1)
    return float(inside.sum()) / max(1, int(ok.sum()))


# ----------------------------------------------------------------------------- LFW


def test_lfw_people_split_loads_with_landmarks(shared_data):
    people = ["Aaron_Eckhart", "Abdullah_Gul", "George_W_Bush"]
    ds = LFW(shared_data / "lfw", split="all", people=people, max_people=2)
    assert ds.people == ["Aaron_Eckhart", "Abdullah_Gul"] and ds.num_classes == 2
    item = ds[0]
    assert set(item) == {"image", "label", "landmarks", "index"}
    assert item["image"].shape == (3, 112, 112) and item["landmarks"].shape == (5, 2)
    # Aaron_Eckhart_0001 has (64.2, 64.2) for the left eye at 150 px -> x 112/150
    assert torch.allclose(item["landmarks"][0], torch.tensor([64.2, 64.2]) * 112 / 150, atol=1e-3)
    assert all(_inside_fraction(ds[i]) == 1.0 for i in range(len(ds)))
    batch = default_collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 112, 112)
    assert LFW(shared_data / "lfw", split="all", people=people, landmarks="68pt", max_people=1)[0][
        "landmarks"
    ].shape == (68, 2)


def test_lfw_view1_train_and_test_people_are_disjoint(shared_data):
    train = LFW(shared_data / "lfw", split="train", max_people=300, check="none")
    test_ds, pairs = lfw_pairs(shared_data / "lfw", view="test", max_pairs=40, check="none")
    assert not set(train.people) & set(test_ds.people)
    assert len(pairs) == 40 and np.bincount(pairs.fold).tolist() == [4] * 10
    assert np.array_equal(pairs.is_same, test_ds.labels[pairs.index_a] == test_ds.labels[pairs.index_b])


def test_lfw_dev_test_list_names_one_missing_image_in_the_shared_copy(shared_data):
    with pytest.raises(FileNotFoundError, match="Betsy_Coffin_0001.jpg"):
        lfw_pairs(shared_data / "lfw", view="test", check="none")
    ds, pairs = lfw_pairs(shared_data / "lfw", view="test", on_missing="drop", check="none")
    assert len(pairs) == 999 and len(ds.dropped_pairs) == 1
    assert int(pairs.is_same.sum()) == 500


def test_lfw_view2_keeps_its_folds(shared_data):
    pairs, fold = read_lfw_pairs(shared_data / "lfw" / "annotations" / "pairs.txt")
    assert len(pairs) == 6000 and np.bincount(fold).tolist() == [600] * 10
    same = np.array([a == b for a, _, b, _ in pairs])
    assert same[:300].all() and not same[300:600].any()


def test_lfw_pairs_naming_missing_files_lists_them(shared_data, tmp_path):
    root = tmp_path / "lfw"
    (root / "images").mkdir(parents=True)
    shutil.copytree(shared_data / "lfw" / "images" / "Aaron_Eckhart", root / "images" / "Aaron_Eckhart")
    (root / "pairsDevTest.txt").write_text("1\nAaron_Eckhart\t1\t2\nAaron_Eckhart\t1\tNobody_Here\t3\n")
    with pytest.raises(FileNotFoundError) as err:
        lfw_pairs(root, view="test")
    msg = str(err.value)
    assert "Aaron_Eckhart_0002.jpg" in msg and "Nobody_Here_0003.jpg" in msg and "prepare.py" in msg


def test_jittered_lfw_moves_landmarks_with_the_image(shared_data):
    ds = LFW(shared_data / "lfw", split="all", people=["Abdullah_Gul"], check="none")
    jds = jittered(ds, max_shift=0.15, seed=0)
    a, b = ds[0], jds[0]
    dx, dy = b["shift"].tolist()
    visible = torch.isfinite(b["landmarks"][:, 0])
    assert torch.allclose(b["landmarks"][visible], a["landmarks"][visible] + torch.tensor([dx, dy]))
    spread = torch.stack([jds[i]["landmarks"][0] for i in range(len(jds))]).std(0)
    assert (spread > torch.stack([ds[i]["landmarks"][0] for i in range(len(ds))]).std(0)).all()


# ----------------------------------------------------------------------------- ORL / folders


def test_orl_identity_folders(shared_data):
    ds = build_dataset("orl", shared_data / "orl", split="all", landmarks="68pt")
    assert ds.num_classes == 40 and len(ds) == 400 and ds.identities[:3] == ["s1", "s2", "s3"]
    item = ds[0]
    assert item["image"].shape == (3, 112, 112) and item["landmarks"].shape == (68, 2)
    assert ds.landmark_names == LANDMARK68_NAMES
    # grey images become three equal channels
    assert torch.equal(item["image"][0], item["image"][1])
    # 92x112 is padded to 112x112: the padding columns are black, landmarks shift by 10 px
    assert float(item["image"][:, :, :9].max()) == 0.0
    assert _inside_fraction(item) == 1.0
    train, test = (build_dataset("orl", shared_data / "orl", split=s) for s in ("train", "test"))
    assert (
        train.num_classes == 32 and test.num_classes == 8 and not set(train.identities) & set(test.identities)
    )
    # 6 images have no detected face: their landmarks are NaN, the images are kept
    five = ImageFolderFaces(shared_data / "orl", landmarks="5pt", check="none")
    nan = torch.stack([five[i]["landmarks"] for i in range(len(five))]).isnan().all(2).all(1)
    assert int(nan.sum()) == 6


def test_orl_pairs_from_labels(shared_data):
    ds, pairs = build_pairs("orl", shared_data / "orl", split="all", num_pairs=200, check="none")
    assert len(pairs) == 200 and np.array_equal(
        pairs.is_same, ds.labels[pairs.index_a] == ds.labels[pairs.index_b]
    )


# ----------------------------------------------------------------------------- CelebA


def test_celeba_in_the_wild_crops_without_rotation(shared_data):
    ds = CelebA(shared_data / "celeba_subset", max_identities=3)
    assert ds.num_classes == 3 and len(ds) <= 60 and len(ds) > 50
    assert all(reason.startswith("no face") for _, reason in ds.skipped)
    item = ds[0]
    assert item["image"].shape == (3, 112, 112) and _inside_fraction(item) == 1.0
    lm = item["landmarks"]
    # a square box 1.6x the 68-point extent: eyes in the upper half, mouth in the lower
    assert lm[:2, 1].max() < 56 < lm[3:, 1].min()
    full = CelebA(shared_data / "celeba_subset", check="none")
    assert len(full) == 967 and full.num_skipped == 33
    train, test = (CelebA(shared_data / "celeba_subset", split=s, check="none") for s in ("train", "test"))
    assert train.num_classes == 40 and test.num_classes == 10 and len(train) + len(test) == 967


def test_celeba_identity_file_without_header_and_official_5pt_landmarks(shared_data, tmp_path):
    src = shared_data / "celeba_subset"
    root = tmp_path / "celeba"
    (root / "images").mkdir(parents=True)
    lines = (src / "annotations" / "identity_subset.txt").read_text().splitlines()[1:6]
    for line in lines:
        shutil.copy(src / "images" / line.split()[0], root / "images")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")  # official: no header
    # official list_landmarks_celeba.txt layout, built from the 68-point file
    from ecl.data import read_landmarks_68

    l68 = read_landmarks_68(src / "annotations" / "landmarks68_dlib_DERIVED.tsv")
    rows = [
        f"{len(lines)}",
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y",
    ]
    for line in lines:
        name = line.split()[0]
        if l68.get(name) is not None:
            pts = five_from_68(l68[name][1]).round().astype(int).ravel()
            rows.append(name + " " + " ".join(str(v) for v in pts))
    (root / "list_landmarks_celeba.txt").write_text("\n".join(rows) + "\n")
    assert len(read_landmarks_5pt(root / "list_landmarks_celeba.txt")) == len(rows) - 2
    ds = CelebA(root)
    assert len(ds) == len(rows) - 2 and ds.num_skipped == len(lines) - len(ds)
    assert all(_inside_fraction(ds[i]) == 1.0 for i in range(len(ds)))
    with pytest.raises(FileNotFoundError, match="68"):
        CelebA(root, landmarks="68pt")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name,script", [("lfw", "lfw"), ("celeba", "celeba"), ("folder", "folder"), ("orl", "orl")]
)
def test_missing_root_names_the_path_and_the_prepare_command(tmp_path, name, script):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(name, missing)
    assert str(missing) in str(err.value) and f"data/{script}/prepare.py" in str(err.value)


def _folder_with_bad_images(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    for ident in ("alice", "bob"):
        (root / ident).mkdir(parents=True)
        for k in range(3):
            (root / ident / f"{k}.jpg").write_bytes(_jpeg(colour=(40 * k, 100, 150)))
    (root / "alice" / "garbage.jpg").write_bytes(b"this is not an image")
    good = _jpeg(size=(200, 200))
    (root / "bob" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_corrupt_images_are_skipped_and_counted_or_raise(tmp_path):
    root = _folder_with_bad_images(tmp_path)
    ds = ImageFolderFaces(root)  # header check: catches the garbage file
    assert len(ds) == 7 and ds.num_skipped == 1 and ds.skipped[0][0].endswith("garbage.jpg")
    full = ImageFolderFaces(root, check="decode")  # full decode: catches the truncated one too
    assert len(full) == 6 and full.num_skipped == 2
    assert all(full[i]["image"].shape == (3, 112, 112) for i in range(len(full)))
    with pytest.raises(OSError, match="garbage.jpg"):
        ImageFolderFaces(root, on_corrupt="raise")
    with pytest.raises(OSError, match="truncated.jpg"):
        ds[[str(p).endswith("truncated.jpg") for p in ds.paths].index(True)]


def test_face_images_validates_options(tmp_path):
    with pytest.raises(ValueError, match="on_corrupt"):
        FaceImages([], [], on_corrupt="ignore")
    with pytest.raises(ValueError, match="landmarks"):
        ImageFolderFaces(_folder_with_bad_images(tmp_path), landmarks="7pt")


# ----------------------------------------------------------------------------- InsightFace .bin


def test_bin_pack_loads_with_the_restricted_unpickler(tmp_path):
    bins = [_jpeg((112, 112), (10 * i, 50, 90)) for i in range(8)]
    issame = [True, False, True, False]
    path = tmp_path / "tiny.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))
    ds, pairs = load_bin(path, folds=2)
    assert len(ds) == 8 and len(pairs) == 4 and pairs.is_same.tolist() == issame
    assert pairs.index_a.tolist() == [0, 2, 4, 6] and pairs.index_b.tolist() == [1, 3, 5, 7]
    assert ds[3]["image"].shape == (3, 112, 112) and int(ds[3]["label"]) == -1
    # Python 2 packs: images pickled as str (protocol 0) come back as bytes
    assert safe_load_bin(pickle.dumps(([b"ab", b"cd"], [True]), protocol=0))[0] == [b"ab", b"cd"]


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_crafted_bin_pickle_raises_and_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(([_Exploit(str(marker))], [True]))
    with pytest.raises(UnsafePickleError, match="refusing"):
        safe_load_bin(evil)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        safe_load_bin(pickle.dumps((np.zeros(2), [True])))  # numpy arrays need a global too
    with pytest.raises(UnsafePickleError, match="2 per pair"):
        safe_load_bin(pickle.dumps(([b"a"], [True])))
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        load_bin(tmp_path / "lfw.bin")


# ----------------------------------------------------------------------------- downloads


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A local server that honours Range requests (the stdlib one ignores them) and counts requests."""

    requests: list[str] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.requests = []
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_and_checks_sha256(server, tmp_path):
    served, url = server
    payload = os.urandom(50_000)
    (served / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(payload[:20_000])  # an interrupted download
    digest = sha256sum(served / "blob.bin")
    download(f"{url}/blob.bin", dest, sha256=digest, quiet=True)
    assert dest.read_bytes() == payload and _RangeHandler.requests == ["bytes=20000-"]
    download(f"{url}/blob.bin", dest, sha256=digest, quiet=True)  # present and valid: no request
    assert len(_RangeHandler.requests) == 1
    with pytest.raises(ChecksumError, match="does not match"):
        download(f"{url}/blob.bin", tmp_path / "other.bin", sha256="0" * 64, quiet=True)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()
    local = download((served / "blob.bin").as_uri(), tmp_path / "viafile.bin", quiet=True)
    assert local.read_bytes() == payload


def test_extract_refuses_paths_outside_the_destination(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises((tarfile.TarError, ValueError)):
        extract(evil, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO / "data" / name / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_lfw_prepare_script_offline_against_a_local_fixture(server, tmp_path, shared_data):
    served, url = server
    # a miniature lfw.tgz with two people, and the official lists, served locally
    with tarfile.open(served / "lfw.tgz", "w:gz") as tf:
        for person in ("Aaron_Eckhart", "Abdullah_Gul"):
            for f in sorted((shared_data / "lfw" / "images" / person).glob("*.jpg"))[:2]:
                tf.add(f, arcname=f"lfw/{person}/{f.name}")
    (served / "pairsDevTest.txt").write_text("1\nAbdullah_Gul\t1\t2\nAaron_Eckhart\t1\tAbdullah_Gul\t1\n")
    prepare = _load_script("lfw")
    files = {}
    for name, (_, _, rel) in prepare.FILES.items():
        if name != "lfw.tgz" and name != "pairsDevTest.txt":
            (served / name).write_text("1\n")
        files[name] = (f"{url}/{name}", sha256sum(served / name), rel)
    prepare.FILES = files
    root = tmp_path / "lfw_root"
    assert prepare.main(["--root", str(root), "--quiet"]) == 0
    ds, pairs = lfw_pairs(root, view="test", landmarks="none")
    assert len(pairs) == 2 and len(ds) == 3 and ds[0]["image"].shape == (3, 112, 112)
    assert not (root / "downloads" / "lfw.tgz").exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_bin_packs_of_every_pickle_protocol_load(protocol):
    bins, issame = safe_load_bin(pickle.dumps(([b"\x00\xffjpeg", b"x"], [False]), protocol=protocol))
    assert bins == [b"\x00\xffjpeg", b"x"] and issame == [False]


def test_celeba_crop_from_a_given_box(shared_data, tmp_path):
    src = shared_data / "celeba_subset"
    root = tmp_path / "celeba"
    (root / "images").mkdir(parents=True)
    lines = (src / "annotations" / "identity_subset.txt").read_text().splitlines()[1:4]
    for line in lines:
        shutil.copy(src / "images" / line.split()[0], root / "images")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(src / "annotations" / "landmarks68_dlib_DERIVED.tsv", root)
    from ecl.data import read_landmarks_68

    l68 = read_landmarks_68(root / "landmarks68_dlib_DERIVED.tsv")
    rows = [str(len(lines)), "image_id x_1 y_1 width height"]
    for line in lines:
        name = line.split()[0]
        if l68.get(name) is not None:
            left, top, right, bottom = l68[name][0]
            rows.append(f"{name} {int(left)} {int(top)} {int(right - left)} {int(bottom - top)}")
    (root / "list_bbox_celeba.txt").write_text("\n".join(rows) + "\n")
    ds = CelebA(root, box="bbox", box_scale=1.5)
    assert len(ds) == len(rows) - 2
    assert all(_inside_fraction(ds[i]) == 1.0 for i in range(len(ds)))


def test_bin_factory(tmp_path):
    path = tmp_path / "pack.bin"
    path.write_bytes(pickle.dumps(([_jpeg((112, 112))] * 40, [True, False] * 10)))
    ds, pairs = build_pairs("bin", path, folds=10)
    assert len(ds) == 40 and len(pairs) == 20 and np.bincount(pairs.fold).tolist() == [2] * 10
    assert len(build_dataset("bin", path)) == 40
