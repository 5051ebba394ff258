"""Verification protocol: hand-checked numbers, the reference algorithm, and the embedding pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ecl.data import balanced_folds
from ecl.evaluate import evaluate_pairs, extract_embeddings, tar_at_far, verification


def embeddings_at_distances(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit 2-D vectors whose squared distance is exactly the given values (d = 2 - 2 cos)."""
    angles = np.arccos(1.0 - np.asarray(distances) / 2.0)
    a = np.stack([np.ones_like(angles), np.zeros_like(angles)], axis=1)
    b = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return a, b


# Four same pairs then four different pairs (View-1 style), distances off the threshold grid.
SAME = [0.205, 0.605, 1.105, 0.405]
DIFF = [1.505, 0.905, 2.505, 3.005]


def test_hand_checked_two_fold_case():
    a, b = embeddings_at_distances(np.array(SAME + DIFF))
    is_same = np.array([True] * 4 + [False] * 4)
    # Balanced folds: same pairs 0,1 and different pairs 0,1 form fold 0.
    np.testing.assert_array_equal(balanced_folds(is_same, 2), [0, 0, 1, 1, 0, 0, 1, 1])
    result = verification(a, b, is_same, folds=2)
    # Fold 0 is tested with the threshold learnt on fold 1 (1.11: first grid value above 1.105):
    # 0.905 (different) is then called "same": 3/4. Fold 1 with 0.61 misses 1.105 (same): 3/4.
    np.testing.assert_allclose(result.fold_thresholds, [1.11, 0.61])
    np.testing.assert_allclose(result.fold_accuracies, [0.75, 0.75])
    assert result.accuracy == pytest.approx(0.75)
    assert result.accuracy_std == pytest.approx(0.0)
    assert result.threshold == pytest.approx(0.86)
    # 15 of the 16 (same, different) orderings are right: only 1.105 > 0.905.
    assert result.auc == pytest.approx(15 / 16)
    # ROC: (0, .75) then (.25, .75): false negatives meet false positives at 0.25.
    assert result.eer == pytest.approx(0.25)
    assert result.tar_at_far[1e-3] == pytest.approx(0.75)
    assert result.tar_at_far[1e-2] == pytest.approx(0.75)


def test_contiguous_split_of_an_unbalanced_list_is_what_the_balancing_avoids():
    a, b = embeddings_at_distances(np.array(SAME + DIFF))
    is_same = np.array([True] * 4 + [False] * 4)
    result = verification(a, b, is_same, folds=2, balanced=False)
    # Fold 0 (all same) is tested with the threshold learnt on different pairs only (0.0): 0/4.
    # Fold 1 (all different) with 1.11 misses 0.905: 3/4.
    np.testing.assert_allclose(result.fold_accuracies, [0.0, 0.75])
    np.testing.assert_allclose(result.fold_thresholds, [0.0, 1.11])


def reference_verification(a: np.ndarray, b: np.ndarray, is_same: np.ndarray, nfolds: int):
    """The documented algorithm of the standard evaluation code, written out with plain loops."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = np.sum(np.square(a - b), axis=1)
    thresholds = np.arange(0, 4, 0.01)
    indices = np.arange(len(dist))
    test_sets = np.array_split(indices, nfolds)  # KFold(shuffle=False): contiguous, first ones larger

    def accuracy(threshold, d, same):
        predict = d < threshold
        tp = np.sum(predict & same)
        tn = np.sum(~predict & ~same)
        return float(tp + tn) / d.size

    accuracies, chosen = [], []
    for test in test_sets:
        train = np.setdiff1d(indices, test)
        train_acc = [accuracy(t, dist[train], is_same[train]) for t in thresholds]
        best = int(np.argmax(train_acc))
        chosen.append(thresholds[best])
        accuracies.append(accuracy(thresholds[best], dist[test], is_same[test]))
    return np.array(accuracies), np.array(chosen)


@pytest.mark.parametrize("balanced", [True, False])
def test_matches_the_reference_protocol_on_a_blocked_list(balanced):
    rng = np.random.default_rng(0)
    nfolds, half = 10, 12
    # 10 blocks of 12 same + 12 different pairs, like LFW pairs.txt: both fold rules coincide.
    is_same = np.tile(np.r_[np.ones(half, bool), np.zeros(half, bool)], nfolds)
    a = rng.normal(size=(len(is_same), 16))
    noise = np.where(is_same[:, None], 0.9, 3.0)
    b = a + noise * rng.normal(size=a.shape)
    ref_acc, ref_thr = reference_verification(a, b, is_same, nfolds)
    result = verification(a, b, is_same, folds=nfolds, balanced=balanced)
    np.testing.assert_array_equal(result.fold_thresholds, ref_thr)
    np.testing.assert_allclose(result.fold_accuracies, ref_acc)
    assert result.accuracy == pytest.approx(ref_acc.mean())
    assert result.accuracy_std == pytest.approx(ref_acc.std())
    assert 0.6 < result.accuracy < 1.0  # a case where thresholds matter


def test_balanced_folds_reproduce_the_blocks_of_pairs_txt():
    is_same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    np.testing.assert_array_equal(balanced_folds(is_same, 10), np.repeat(np.arange(10), 600))


def test_balanced_folds_cut_each_kind_like_kfold():
    # 10 same pairs then 7 different ones into 4 folds: chunk sizes 3,3,2,2 and 2,2,2,1.
    is_same = np.r_[np.ones(10, bool), np.zeros(7, bool)]
    np.testing.assert_array_equal(
        balanced_folds(is_same, 4), [0, 0, 0, 1, 1, 1, 2, 2, 3, 3] + [0, 0, 1, 1, 2, 2, 3]
    )


def test_explicit_fold_ids_are_kept():
    a, b = embeddings_at_distances(np.array(SAME + DIFF))
    is_same = np.array([True] * 4 + [False] * 4)
    result = verification(a, b, is_same, folds=np.array([0, 0, 1, 1, 0, 0, 1, 1]))
    np.testing.assert_allclose(result.fold_accuracies, [0.75, 0.75])
    with pytest.raises(ValueError, match="one entry per pair"):
        verification(a, b, is_same, folds=np.zeros(3, int))


def test_separable_embeddings_score_one_and_identical_embeddings_score_one_half():
    rng = np.random.default_rng(1)
    n = 200
    is_same = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    # The same person always gives the same embedding; different people are far apart.
    a, b = embeddings_at_distances(np.where(is_same, 0.0, rng.uniform(1.5, 3.5, n)))
    result = verification(a, b, is_same)
    assert result.accuracy == 1.0
    assert result.auc == 1.0
    assert result.eer == 0.0
    assert result.tar_at_far[1e-3] == 1.0

    same_everywhere = np.ones((n, 8))
    result = verification(same_everywhere, same_everywhere, is_same)
    assert result.accuracy == pytest.approx(0.5)
    assert result.auc == pytest.approx(0.5)


def test_tar_at_far_reads_the_roc_polyline():
    fpr = np.array([0.0, 0.0, 0.5, 0.5, 1.0])
    tpr = np.array([0.0, 0.4, 0.4, 0.9, 1.0])
    assert tar_at_far(fpr, tpr, 0.25) == pytest.approx(0.4)  # horizontal segment
    assert tar_at_far(fpr, tpr, 0.5) == pytest.approx(0.9)  # top of a vertical segment
    assert tar_at_far(fpr, tpr, 0.75) == pytest.approx(0.95)


def test_bad_inputs_are_named():
    a = np.ones((4, 3))
    with pytest.raises(ValueError, match="both same and different"):
        verification(a, a, np.ones(4, bool), folds=2)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        verification(a, np.ones((3, 3)), np.ones(4, bool))


class MeanColour(nn.Module):
    """Embeds an image as its mean colour plus left/right asymmetry; activations are the image."""

    def forward(self, images):
        left, right = images[..., : images.shape[-1] // 2], images[..., images.shape[-1] // 2 :]
        embeddings = torch.cat([images.mean((2, 3)), (left.mean((2, 3)) - right.mean((2, 3)))], dim=1)
        return embeddings, images


def test_extract_embeddings_normalises_and_flip_sums_mirrors():
    images = torch.rand(5, 3, 8, 8)
    loader = [{"image": images[:3]}, {"image": images[3:]}]
    plain = extract_embeddings(MeanColour(), loader, flip=False, progress=False)
    assert plain.shape == (5, 6)
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, rtol=1e-5)
    flipped = extract_embeddings(MeanColour(), loader, flip=True, progress=False)
    # The asymmetry features cancel between an image and its mirror.
    np.testing.assert_allclose(flipped[:, 3:], 0.0, atol=1e-6)


class ColourDataset(torch.utils.data.Dataset):
    def __init__(self, colours):
        self.colours = colours

    def __len__(self):
        return len(self.colours)

    def __getitem__(self, index):
        image = torch.ones(3, 8, 8) * torch.tensor(self.colours[index]).view(3, 1, 1)
        return {"image": image, "label": index, "landmarks": torch.zeros(0, 2), "index": index}


def test_evaluate_pairs_on_a_pair_list():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    colours = rng.uniform(0.05, 1, size=(40, 3)).astype(np.float32)
    dataset = ColourDataset(colours)
    index_a = np.arange(0, 40, 2)
    index_b = np.arange(1, 40, 2)
    # Each odd image repeats its even neighbour's colour in the first half: same pairs are exact.
    for i in range(10):
        colours[index_b[i]] = colours[index_a[i]]
    is_same = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    pairs = SimpleNamespace(index_a=index_a, index_b=index_b, is_same=is_same, fold=None)
    result = evaluate_pairs(MeanColour(), dataset, pairs, flip=True, batch_size=7, progress=False)
    assert result.num_pairs == 20
    assert result.accuracy > 0.8


class TinyFaceNet(nn.Module):
    """A stand-in trained model: 8-channel 14 x 14 maps (stride 8) and their pooled embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.image_size = 112

    def forward(self, images):
        activations = torch.relu(self.conv(images))
        return activations.mean((2, 3)), activations


def test_evaluate_command_prints_one_json_object(monkeypatch, capsys, tmp_path):
    pytest.importorskip("ecl.data")
    checkpoint = pytest.importorskip("ecl.checkpoint")
    monkeypatch.setattr(checkpoint, "load_run", lambda path, map_location="cpu": (TinyFaceNet(), None))
    from ecl.cli import main

    out = tmp_path / "result.json"
    argv = [
        "evaluate",
        "--checkpoint",
        "run",
        "--data",
        "faceparts",
        "--max-images",
        "20",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["verification"]["num_pairs"] == 20
    assert printed["split"] == "FaceParts test"
    assert 0.0 <= printed["verification"]["accuracy"] <= 1.0
    for copy in ("original", "jittered"):
        numbers = printed["explainability"][copy]
        assert numbers["num_images"] == 20 and numbers["num_channels"] == 8
        assert {
            "location_instability",
            "part_iou",
            "peak_hit_rate",
            "translation_tracking",
            "part_coverage",
        } <= set(numbers)


def test_subsample_pairs_keeps_every_fold_balanced():
    data = pytest.importorskip("ecl.data")
    from ecl.evaluate import subsample_pairs

    is_same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    pairs = data.PairList(np.arange(600), np.arange(600) + 600, is_same, np.repeat(np.arange(10), 60))
    small = subsample_pairs(pairs, 100)
    assert len(small) == 100
    for fold in range(10):
        assert (
            small.is_same[small.fold == fold].sum() == 5 and (~small.is_same[small.fold == fold]).sum() == 5
        )


@pytest.mark.parametrize("spec, folds_from_file", [("lfw", False), ("lfw-view2", True)])
def test_real_lfw_pair_lists_run_with_their_folds(shared_data, spec, folds_from_file):
    from ecl.evaluate import load_evaluation_data

    dataset, pairs, _ = load_evaluation_data(f"{spec}:{shared_data / 'lfw'}", max_images=40)
    assert len(pairs) == 20 and len(np.unique(pairs.fold)) == 10
    # Every fold keeps one same and one different pair: View 2 by its own blocks, View 1 (all
    # same pairs, then all different ones) by balancing.
    for fold in range(10):
        assert sorted(pairs.is_same[pairs.fold == fold]) == [False, True]
    result = evaluate_pairs(TinyFaceNet(), dataset, pairs, batch_size=20, progress=False)
    assert result.num_pairs == 20 and len(result.fold_accuracies) == 10


def test_insightface_bin_pack_runs_through_the_evaluation(tmp_path):
    pytest.importorskip("ecl.data")
    import io
    import pickle

    from PIL import Image

    from ecl.evaluate import load_evaluation_data
    from ecl.metrics import explainability_metrics

    rng = np.random.default_rng(0)
    bins = []
    for _ in range(40):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, size=(112, 112, 3), dtype=np.uint8)).save(buffer, format="PNG")
        bins.append(buffer.getvalue())
    with open(tmp_path / "tiny.bin", "wb") as f:
        pickle.dump((bins, [True, False] * 10), f)
    dataset, pairs, explain_dataset = load_evaluation_data(f"bin:{tmp_path / 'tiny.bin'}")
    result = evaluate_pairs(TinyFaceNet(), dataset, pairs, batch_size=20, progress=False)
    assert result.num_pairs == 20 and len(result.fold_accuracies) == 10
    numbers = explainability_metrics(
        TinyFaceNet(), explain_dataset, batch_size=20, tracking_images=4, progress=False
    )
    assert "translation_tracking" in numbers and "location_instability" not in numbers


def test_validation_spec_measures_other_identities_and_says_so():
    from ecl.evaluate import evaluation_split, load_evaluation_data

    test_set, test_pairs, _ = load_evaluation_data("faceparts", image_size=32, max_images=40)
    val_set, val_pairs, explain_set = load_evaluation_data("faceparts-val", image_size=32, max_images=40)
    assert val_set.split == "val" and test_set.split == "test" and explain_set is val_set
    assert len(val_pairs) == len(test_pairs)
    assert not np.array_equal(val_set.raw(0)[0], test_set.raw(0)[0])
    assert evaluation_split("faceparts-val") == "FaceParts validation"
    assert evaluation_split("lfw:/x") == "LFW View-1 test"
    with pytest.raises(ValueError, match="unknown data spec"):
        evaluation_split("mnist")
