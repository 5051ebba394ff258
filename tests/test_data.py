"""FaceParts, pair lists, the evaluation jitter and the dataset factories (no real data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from ecl.data import (
    CHIMERA_PARTS,
    LANDMARK_NAMES,
    PART_NAMES,
    FaceParts,
    Jitter,
    PairList,
    balanced_folds,
    build_dataset,
    build_pairs,
    faceparts_pairs,
    jittered,
)


def small(split: str = "train", **kw) -> FaceParts:
    kw.setdefault("num_identities", 8)
    kw.setdefault("images_per_identity", 4)
    kw.setdefault("cache", "none")
    return FaceParts(split, **kw)


@pytest.fixture(scope="module")
def medium() -> FaceParts:
    # 200 images: enough for the statistical properties, rendered once (~0.3 s)
    return FaceParts("train", num_identities=40, images_per_identity=5, seed=1, cache="memory")


def _value_at(maps: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """maps (N, S, S), points (N, 2) pixel (x, y) -> (value at the pixel holding each point, point
    inside image)."""
    n, size = maps.shape[0], maps.shape[-1]
    x, y = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    out = np.zeros(n, dtype=maps.dtype)
    out[inside] = maps[np.arange(n)[inside], y[inside], x[inside]]
    return out, inside


# ----------------------------------------------------------------------------- FaceParts


def test_item_keys_shapes_and_attributes():
    ds = small(image_size=64)
    item = ds[5]
    assert set(item) == {"image", "label", "landmarks", "masks", "index"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["landmarks"].shape == (5, 2) and item["landmarks"].dtype == torch.float32
    assert item["masks"].shape == (len(PART_NAMES), 64, 64) and item["masks"].dtype == torch.bool
    assert int(item["label"]) == 1 and item["index"] == 5
    assert (
        ds.landmark_names == LANDMARK_NAMES == ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
    )
    assert set(("left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth", "hair", "skin")) <= set(
        ds.part_names
    )
    assert ds.num_classes == 8 and len(ds) == 32 and list(ds.labels[:5]) == [0, 0, 0, 0, 1]
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 64, 64)
    # masks are a partition of the face: no pixel belongs to two parts
    assert int(item["masks"].sum(0).max()) <= 1


def test_same_seed_same_bytes_different_seed_different_faces():
    a, b, c = small(seed=7), small(seed=7), small(seed=8)
    for i in (0, 13, 31):
        assert np.array_equal(a.raw(i)[0], b.raw(i)[0]) and np.array_equal(a.raw(i)[1], b.raw(i)[1])
    assert not np.array_equal(a.raw(0)[0], c.raw(0)[0])


def test_item_does_not_depend_on_access_order_or_cache_mode(tmp_path):
    lazy = small(seed=2)
    first = lazy.raw(9)[0].copy()
    for i in range(len(lazy)):
        lazy.raw(i)
    assert np.array_equal(lazy.raw(9)[0], first)
    memory = small(seed=2, cache="memory")
    disk = small(seed=2, cache="disk", cache_dir=tmp_path)
    for ds in (memory, disk):
        assert torch.equal(ds[9]["image"], lazy[9]["image"]) and torch.equal(ds[9]["masks"], lazy[9]["masks"])


def test_disk_cache_is_reused_and_keyed_by_parameters(tmp_path, monkeypatch):
    ds = small(seed=4, cache="disk", cache_dir=tmp_path)
    assert ds.cache_path is not None and ds.cache_path.is_file()
    monkeypatch.setattr(FaceParts, "_render_all", lambda self: pytest.fail("re-rendered despite a cache"))
    again = small(seed=4, cache="disk", cache_dir=tmp_path)
    assert torch.equal(again[3]["image"], ds[3]["image"])
    assert small(seed=5, cache="none").key() != ds.key()
    assert small(seed=4, difficulty=0.9, cache="none").key() != ds.key()


def test_env_var_sets_the_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ECL_CACHE", str(tmp_path))
    ds = small(num_identities=2, images_per_identity=2, cache="disk")
    assert ds.cache_path is not None and ds.cache_path.parent == tmp_path / "faceparts"


def test_train_validation_and_test_identities_are_disjoint():
    splits = {name: small(name, num_identities=20) for name in ("train", "val", "test")}
    people = {
        name: {tuple(sorted((g, k, v) for g in i.z for k, v in i.z[g].items())) for i in ds.identities}
        for name, ds in splits.items()
    }
    assert not people["train"] & people["test"]
    assert not people["train"] & people["val"] and not people["val"] & people["test"]
    assert not np.array_equal(splits["train"].raw(0)[0], splits["test"].raw(0)[0])
    assert not np.array_equal(splits["val"].raw(0)[0], splits["test"].raw(0)[0])
    with pytest.raises(ValueError, match="'train', 'val' or 'test'"):
        small("validation")


def test_eye_landmarks_lie_in_their_eye_masks(medium):
    labelmaps, landmarks = medium._labelmaps, medium._landmarks
    for k, part in ((0, "left_eye"), (1, "right_eye")):
        value, _ = _value_at(labelmaps, landmarks[:, k])
        assert np.mean(value == PART_NAMES.index(part) + 1) >= 0.95, part
    # every other landmark lies in its part on most images too
    for k, part in ((2, "nose"), (3, "mouth"), (4, "mouth")):
        value, _ = _value_at(labelmaps, landmarks[:, k])
        assert np.mean(value == PART_NAMES.index(part) + 1) >= 0.9, LANDMARK_NAMES[k]


def test_faces_are_not_aligned(medium):
    # landmark positions spread by >= 5 px (std) at 112 px in both x and y
    assert medium._landmarks.std(axis=0).min() >= 5.0
    # left/right stay image-left/right under +-20 degrees of rotation
    assert (medium._landmarks[:, 0, 0] < medium._landmarks[:, 1, 0]).all()


def test_about_ten_percent_of_images_are_occluded(medium):
    assert 0.03 <= medium.occluded.mean() <= 0.2
    none = FaceParts("train", num_identities=10, images_per_identity=5, occlusion_prob=0.0, cache="memory")
    assert not none.occluded.any()


def test_parts_masks_are_not_empty_on_unoccluded_images(medium):
    visible = ~medium.occluded
    for code, part in enumerate(PART_NAMES, start=1):
        if part == "hair":
            continue  # "receding" hair styles have almost no hair
        area = (medium._labelmaps[visible] == code).sum(axis=(1, 2))
        assert np.mean(area > 0) >= 0.95, part


def test_chimera_changes_only_the_swapped_part():
    ds = small(num_identities=4, occlusion_prob=0.0)
    image, labelmap, _, _ = ds.render(0)
    same, _, _, _ = ds.render_chimera(0, 0, "nose", 0)
    assert np.array_equal(same, image)
    for part in CHIMERA_PARTS:
        swapped, _, _, _ = ds.render_chimera(0, 1, part, 0)
        assert not np.array_equal(swapped, image), part
    # a nose swap leaves the image untouched far from the nose: compare the top-left corner region
    swapped, swapped_map, _, _ = ds.render_chimera(0, 2, "mouth", 0)
    far = (labelmap == 0) & (swapped_map == 0)
    assert np.abs(swapped.astype(int) - image.astype(int))[far].mean() < 3.0
    with pytest.raises(ValueError, match="part must be one of"):
        ds.render_chimera(0, 1, "ears", 0)


def test_difficulty_changes_images_and_is_validated():
    assert not np.array_equal(small(difficulty=0.1).raw(0)[0], small(difficulty=0.9).raw(0)[0])
    with pytest.raises(ValueError, match="difficulty"):
        small(difficulty=1.5)
    with pytest.raises(ValueError, match="split"):
        FaceParts("validation")


# ----------------------------------------------------------------------------- pairs


def test_faceparts_pairs_are_balanced_correct_and_deterministic():
    ds = small("test", num_identities=20, images_per_identity=5)
    pairs = faceparts_pairs(ds, num_pairs=200, folds=10, seed=3)
    assert isinstance(pairs, PairList) and len(pairs) == 200
    assert np.array_equal(pairs.is_same, ds.labels[pairs.index_a] == ds.labels[pairs.index_b])
    assert (pairs.index_a != pairs.index_b).all()
    for f in range(10):
        in_fold = pairs.fold == f
        assert pairs.is_same[in_fold].sum() == 10 and (~pairs.is_same[in_fold]).sum() == 10
    keys = {(min(a, b), max(a, b)) for a, b in zip(pairs.index_a, pairs.index_b, strict=True)}
    assert len(keys) == 200
    # identities do not cross folds (LFW View 2 style), since there are >= 2 per fold
    ids_per_fold = [
        set(ds.labels[pairs.index_a[pairs.fold == f]]) | set(ds.labels[pairs.index_b[pairs.fold == f]])
        for f in range(10)
    ]
    assert all(not (ids_per_fold[i] & ids_per_fold[j]) for i in range(10) for j in range(i + 1, 10))
    again = faceparts_pairs(ds, num_pairs=200, folds=10, seed=3)
    assert np.array_equal(again.index_a, pairs.index_a) and np.array_equal(again.index_b, pairs.index_b)
    other = faceparts_pairs(ds, num_pairs=200, folds=10, seed=4)
    assert not np.array_equal(other.index_a, pairs.index_a)


def test_pairs_with_few_identities_still_balanced():
    ds = small("test", num_identities=4, images_per_identity=6)
    pairs = faceparts_pairs(ds, num_pairs=40, folds=10)
    assert np.bincount(pairs.fold[pairs.is_same], minlength=10).tolist() == [2] * 10
    with pytest.raises(ValueError, match="too small"):
        faceparts_pairs(ds, num_pairs=5)


def test_balanced_folds_splits_same_then_different_lists_evenly():
    fold = balanced_folds([True] * 50 + [False] * 50, folds=10)
    assert np.bincount(fold[:50]).tolist() == [5] * 10 and np.bincount(fold[50:]).tolist() == [5] * 10


# ----------------------------------------------------------------------------- jitter


def test_jitter_moves_image_landmarks_and_masks_together():
    ds = small(occlusion_prob=0.0)
    jit = Jitter(max_shift=0.15, seed=1)
    item = ds[6]
    out = jit(item)
    dx, dy = (int(v) for v in out["shift"])
    assert (dx, dy) != (0, 0) and max(abs(dx), abs(dy)) <= 0.15 * 112 + 1
    src = item["image"][:, max(0, -dy) : 112 - max(0, dy), max(0, -dx) : 112 - max(0, dx)]
    dst = out["image"][:, max(0, dy) : 112 - max(0, -dy), max(0, dx) : 112 - max(0, -dx)]
    assert torch.equal(src, dst)
    assert torch.equal(
        item["masks"][:, max(0, -dy) : 112 - max(0, dy), max(0, -dx) : 112 - max(0, dx)],
        out["masks"][:, max(0, dy) : 112 - max(0, -dy), max(0, dx) : 112 - max(0, -dx)],
    )
    moved = item["landmarks"] + torch.tensor([dx, dy], dtype=torch.float32)
    visible = ~torch.isnan(out["landmarks"][:, 0])
    assert torch.allclose(out["landmarks"][visible], moved[visible])
    # same seed and index -> same shift; another seed -> another shift
    assert torch.equal(jit(item)["image"], out["image"])
    assert Jitter(seed=2).params(6, 112) != jit.params(6, 112)


def test_jittered_subset_is_jittered_through_a_dataloader():
    # DataLoader prefers a dataset's __getitems__; the wrapper must not hand it the wrapped Subset's.
    ds = small(occlusion_prob=0.0)
    wrapped = jittered(torch.utils.data.Subset(ds, [0, 1, 2, 3]), max_shift=0.15, seed=1)
    batch = next(iter(torch.utils.data.DataLoader(wrapped, batch_size=4)))
    direct = default_collate([wrapped[i] for i in range(4)])
    assert torch.equal(batch["image"], direct["image"])
    assert not torch.equal(batch["image"], default_collate([ds[i] for i in range(4)])["image"])


def test_jitter_with_scale_keeps_landmarks_in_their_parts():
    ds = small(num_identities=10, images_per_identity=4, occlusion_prob=0.0)
    jds = jittered(ds, max_shift=0.1, scale=0.2, padding="reflect", seed=0)
    assert jds.num_classes == ds.num_classes and jds.part_names == ds.part_names and len(jds) == len(ds)
    hits = []
    for i in range(len(jds)):
        item = jds[i]
        eye = PART_NAMES.index("left_eye")
        x, y = item["landmarks"][0]
        if torch.isfinite(x):
            hits.append(bool(item["masks"][eye, int(y), int(x)]))
    assert np.mean(hits) >= 0.9
    with pytest.raises(ValueError, match="padding"):
        Jitter(padding="wrap")


def test_jitter_drops_landmarks_that_leave_the_image():
    item = {
        "image": torch.rand(3, 20, 20),
        "landmarks": torch.tensor([[1.0, 10.0], [10.0, 10.0]]),
        "index": 0,
    }
    jit = Jitter(max_shift=0.5 - 1e-6, seed=0)
    for index in range(40):
        item["index"] = index
        out = jit(item)
        dx, dy = (float(v) for v in out["shift"])
        x, y = 1.0 + dx, 10.0 + dy
        assert bool(torch.isnan(out["landmarks"][0, 0])) == (not (0 <= x < 20 and 0 <= y < 20))


# ----------------------------------------------------------------------------- factories


def test_build_dataset_and_pairs_for_faceparts():
    ds = build_dataset(
        "faceparts", split="test", image_size=64, num_identities=20, images_per_identity=3, cache="none"
    )
    assert isinstance(ds, FaceParts) and ds.split == "test" and ds.image_size == 64
    ds2, pairs = build_pairs(
        "faceparts",
        split="test",
        image_size=64,
        num_pairs=40,
        num_identities=20,
        images_per_identity=3,
        cache="none",
        jitter=0.1,
    )
    assert len(pairs) == 40 and len(ds2) == 60 and "shift" in ds2[0]
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("mnist")
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("lfw")


def test_benchmark_script_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data.py"
    spec = importlib.util.spec_from_file_location("bench_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.main(["--quick", "--n", "100", "--image-size", "48"]) == 0
    assert "images/s per core" in capsys.readouterr().out
