"""Explainability metrics on hand-built models whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecl.activations import ChannelHistograms, cells_to_pixels, collect_activations, upsampled_above
from ecl.data.landmark_masks import LandmarkPartMasks, landmark_part_masks
from ecl.metrics import (
    explainability_metrics,
    explainability_report,
    iou_tallies,
    landmark_assignment,
    location_instability,
    part_coverage,
    part_iou,
    part_iou_from_stats,
    part_iou_from_tallies,
    peak_hit_rate,
    shift_images,
    translation_tracking,
)

S, CELL = 32, 4  # 32 x 32 images, 8 x 8 maps: one cell is 4 x 4 pixels
GRID = S // CELL
OFFSETS = np.array([[0.0, 0.0], [6.0, 3.0], [-5.0, 7.0]])  # landmark k = square centre + offset k


class BlobDetector(nn.Module):
    """A part detector: channel 0 is the image brightness pooled per cell (peaks on the bright square).

    Channel 1 is a position detector: it always peaks at cell (2, 5), whatever the image.
    """

    def forward(self, images):
        blob = F.avg_pool2d(images.mean(1, keepdim=True), CELL)
        fixed = torch.zeros_like(blob)
        fixed[:, :, 2, 5] = 1.0 + images.mean((1, 2, 3)).view(-1, 1)
        return images.flatten(1)[:, :4], torch.cat([blob, fixed], dim=1)


class PixelDetector(nn.Module):
    """One channel at image resolution: the image brightness itself (no upsampling needed)."""

    def forward(self, images):
        return images.flatten(1)[:, :4], images.mean(1, keepdim=True)


class BlobSmoother(nn.Module):
    """A smooth part detector: the pooled brightness blurred over neighbouring cells."""

    def forward(self, images):
        blob = F.avg_pool2d(images.mean(1, keepdim=True), CELL)
        blob = F.conv2d(
            blob, torch.tensor([[[[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]]]]), padding=1
        )
        return images.flatten(1)[:, :4], blob


class SquareFaces(torch.utils.data.Dataset):
    """Black images with a bright cell-aligned square; landmarks move rigidly with it; mask = square."""

    landmark_names = ("centre", "a", "b")
    part_names = ("square", "corner")

    def __init__(self, n=40, seed=0, margin=2):
        rng = np.random.default_rng(seed)
        self.cells = rng.integers(margin, GRID - margin, size=(n, 2))  # (i, j), away from the border
        self.brightness = rng.uniform(0.5, 1.0, size=n)
        self.labels = list(range(n))

    def __len__(self):
        return len(self.cells)

    def __getitem__(self, index):
        i, j = self.cells[index]
        image = torch.zeros(3, S, S)
        image[:, CELL * i : CELL * (i + 1), CELL * j : CELL * (j + 1)] = float(self.brightness[index])
        centre = np.array([CELL * j + CELL / 2, CELL * i + CELL / 2])
        masks = torch.zeros(2, S, S, dtype=torch.bool)
        masks[0] = image[0] > 0
        masks[1, :4, :4] = True
        return {
            "image": image,
            "label": index,
            "landmarks": torch.tensor(centre + OFFSETS, dtype=torch.float32),
            "masks": masks,
            "index": index,
        }


def loader_of(dataset, batch_size=16):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def test_peak_pixels_are_receptive_field_centres():
    cells = np.array([[0, 0], [7, 3]])
    np.testing.assert_allclose(cells_to_pixels(cells, (8, 8), (32, 32)), [[2, 2], [14, 30]])
    np.testing.assert_allclose(
        cells_to_pixels(torch.tensor(cells), (8, 4), (32, 32)).numpy(), [[4, 2], [28, 30]]
    )


def test_collect_activations_keeps_peaks_maxima_and_landmarks():
    dataset = SquareFaces(20)
    stats = collect_activations(BlobDetector(), loader_of(dataset, 6), progress=False)
    assert stats.max_activation.shape == (20, 2)
    assert stats.map_size == (8, 8) and stats.image_size == (32, 32)
    np.testing.assert_array_equal(stats.peak_cells[:, 0], dataset.cells)
    np.testing.assert_array_equal(stats.peak_cells[:, 1], np.tile([2, 5], (20, 1)))
    np.testing.assert_allclose(stats.max_activation[:, 0], dataset.brightness, rtol=1e-6)
    assert stats.landmarks.shape == (20, 3, 2)
    assert stats.part_hits.shape == (2, 2)
    assert stats.part_hits[0, 0] == 20  # the part detector's peak is always inside the square


def test_quantile_sketch_matches_the_exact_quantile_while_its_range_grows():
    rng = np.random.default_rng(0)
    sketch = ChannelHistograms(3, bins=2048)
    chunks = []
    for scale in [0.01, 0.1, 1.0, 1.0, 1.0]:  # the range doubles several times on the way
        values = rng.exponential(scale, size=(3, 4000)) * (rng.random((3, 4000)) < 0.5)  # half exact zeros
        chunks.append(values)
        sketch.update(torch.tensor(values, dtype=torch.float32))
    values = np.concatenate(chunks, axis=1)
    exact = np.quantile(values, 0.995, axis=1)
    np.testing.assert_allclose(sketch.quantile(0.995).numpy(), exact, rtol=0.02)
    # A quantile that falls among the zeros is zero.
    np.testing.assert_array_equal(sketch.quantile(0.3).numpy(), 0.0)


def test_part_detector_on_a_landmark_has_zero_instability_and_position_detector_does_not():
    dataset = SquareFaces(40)
    stats = collect_activations(BlobDetector(), loader_of(dataset), progress=False)
    result = location_instability(stats.peak_xy, stats.max_activation, stats.landmarks, S, top_m=100)
    assert result.per_channel[0] == pytest.approx(0.0, abs=1e-9)
    # The fixed peak's distance to the moving landmarks varies.
    assert result.per_channel[1] > 0.05
    assert result.overall == pytest.approx(result.per_channel.mean())
    assert result.active_channels.all()


def test_random_peaks_give_the_instability_of_a_uniform_point():
    rng = np.random.default_rng(0)
    n = 2000
    cells = rng.integers(0, GRID, size=(n, 1, 2))
    peaks = cells_to_pixels(cells, (GRID, GRID), (S, S))
    landmarks = np.full((n, 1, 2), S / 2.0)
    result = location_instability(peaks, rng.random((n, 1)) + 0.1, landmarks, S, top_m=n)
    # A uniform point in a square of side L lies sqrt(1/6 - 0.3826^2) L from its centre on
    # average +- this, i.e. std 0.142 L, or 0.1007 of the diagonal.
    assert result.overall == pytest.approx(0.1007, abs=0.01)


def test_instability_keeps_only_the_top_m_images():
    n, m = 50, 10
    rng = np.random.default_rng(1)
    landmarks = rng.uniform(0, S, size=(n, 1, 2))
    peaks = np.where(np.arange(n)[:, None, None] < m, landmarks, rng.uniform(0, S, size=(n, 1, 2)))
    max_activation = np.where(np.arange(n) < m, 5.0, 1.0)[:, None]
    assert location_instability(peaks, max_activation, landmarks, S, top_m=m).overall == pytest.approx(0.0)
    assert location_instability(peaks, max_activation, landmarks, S, top_m=n).overall > 0.05


def test_missing_landmarks_are_skipped():
    rng = np.random.default_rng(2)
    n = 30
    peaks = rng.uniform(0, S, size=(n, 1, 2))
    landmarks = rng.uniform(0, S, size=(n, 3, 2))
    landmarks[:12, 1] = np.nan  # landmark 1 missing on 12 images
    landmarks[:, 2] = np.nan  # landmark 2 missing everywhere
    result = location_instability(peaks, np.ones((n, 1)), landmarks, S)
    diagonal = math.hypot(S, S)
    d0 = np.linalg.norm(peaks[:, 0] - landmarks[:, 0], axis=1) / diagonal
    d1 = np.linalg.norm(peaks[12:, 0] - landmarks[12:, 1], axis=1) / diagonal
    np.testing.assert_allclose(result.per_landmark[0, :2], [np.std(d0, ddof=1), np.std(d1, ddof=1)])
    assert np.isnan(result.per_landmark[0, 2])
    assert result.overall == pytest.approx((np.std(d0, ddof=1) + np.std(d1, ddof=1)) / 2)


def test_channels_that_never_fire_have_no_instability_and_half_firing_ones_count_as_active():
    n = 10
    peaks = np.zeros((n, 3, 2))
    landmarks = np.random.default_rng(0).uniform(0, S, size=(n, 2, 2))
    max_activation = np.stack([np.ones(n), np.zeros(n), np.r_[np.ones(4), np.zeros(6)]], axis=1)
    result = location_instability(peaks, max_activation, landmarks, S)
    assert np.isnan(result.per_channel[1])
    np.testing.assert_array_equal(result.active_channels, [True, False, False])
    assert result.active == pytest.approx(result.per_channel[0])
    assert np.isfinite(result.overall)


def test_a_map_equal_to_a_part_mask_has_iou_one():
    masks = torch.zeros(2, 2, S, S, dtype=torch.bool)
    masks[0, 0, 3:9, 4:12] = True
    masks[1, 0, 20:30, 1:5] = True
    masks[:, 1, :, 16:] = True
    activations = torch.cat([masks[:, :1].float(), torch.rand(2, 1, S, S)], dim=1)  # same size: no upsampling
    result = part_iou_from_tallies(
        *iou_tallies(activations, masks, torch.tensor([0.5, 2.0])), part_names=["p", "q"]
    )
    np.testing.assert_allclose(result.iou[0], [1.0, 0.0])
    np.testing.assert_allclose(result.iou[1], [0.0, 0.0])  # thresholded away entirely
    np.testing.assert_array_equal(result.assigned, [0, -1])
    assert result.num_detectors == 1 and result.parts_covered == ["p"]


def test_bilinear_upsampling_of_one_cell_covers_its_pixels_but_the_corners():
    # A one-hot cell upsampled x4 (align_corners=False) weighs the cell's pixels 0.625 or 0.875 per
    # axis; above 0.5 are the products 0.875^2 and 0.875 * 0.625: the 4 x 4 square minus its corners.
    activations = torch.zeros(1, 1, GRID, GRID)
    activations[0, 0, 3, 2] = 1.0
    masks = torch.zeros(1, 1, S, S, dtype=torch.bool)
    masks[0, 0, 12:16, 8:12] = True
    intersection, map_area, part_area = iou_tallies(activations, masks, torch.tensor([0.5]))
    assert intersection.item() == 12 and map_area.item() == 12 and part_area.item() == 16
    assert part_iou_from_tallies(intersection, map_area, part_area, ["cell"]).iou[0, 0] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "sizes", [(14, 14, 112, 112), (7, 7, 112, 112), (14, 14, 100, 120), (5, 3, 17, 29), (4, 4, 4, 4)]
)
def test_block_upsampling_keeps_exactly_the_interpolated_pixels_above_the_floor(sizes):
    # The one pass computes only the blocks near cells above the floor; it must keep the same pixels,
    # with the same values, as thresholding F.interpolate (integer and fractional scales alike).
    h, w, image_h, image_w = sizes
    generator = torch.Generator().manual_seed(0)
    activations = torch.relu(torch.randn(3, 5, h, w, generator=generator))
    floor = torch.rand(5, generator=generator) * 1.5
    reference = F.interpolate(activations, size=(image_h, image_w), mode="bilinear", align_corners=False)
    expected = (reference > floor[None, :, None, None]).reshape(3, 5, -1)
    kept = torch.zeros_like(expected)
    values = torch.zeros(expected.shape)
    for value, image, channel, pixel in upsampled_above(activations, floor, (image_h, image_w), max_cells=37):
        assert not kept[image, channel, pixel].any(), "a pixel was yielded twice"
        kept[image, channel, pixel] = True
        values[image, channel, pixel] = value
    assert torch.equal(kept, expected)
    torch.testing.assert_close(values[kept], reference.reshape(3, 5, -1)[kept], rtol=1e-5, atol=1e-6)


def test_streaming_part_iou_with_dataset_quantile_thresholds():
    # The squares' brightness varies by image and covers 16 of 1024 pixels (1.6%): the dataset's
    # (1 - 0.005) quantile lies among the squares, so the binarised maps are exactly the squares
    # brighter than it, and IoU = (number of those) / (number of images).
    dataset = SquareFaces(40)
    model = PixelDetector()
    stats = collect_activations(model, loader_of(dataset), progress=False)
    result = part_iou(model, loader_of(dataset), stats.thresholds, dataset.part_names, progress=False)
    expected = np.mean(dataset.brightness > stats.thresholds[0])
    assert 0.2 < expected < 0.5
    assert result.iou[0, 0] == pytest.approx(expected)
    assert result.is_detector[0] and result.parts_covered == ["square"]
    hits = peak_hit_rate(stats, result.assigned)
    assert hits.per_channel[0] == 1.0
    coverage = part_coverage(result.assigned, dataset.part_names)
    assert coverage["channels_per_part"] == {"square": 1, "corner": 0}


def test_one_pass_iou_tallies_match_the_exact_second_pass():
    dataset = SquareFaces(40)
    for model in (PixelDetector(), BlobSmoother()):
        stats = collect_activations(model, loader_of(dataset), progress=False)
        exact = part_iou(model, loader_of(dataset), stats.thresholds, dataset.part_names, progress=False)
        one_pass = part_iou_from_stats(stats)
        # Only pixels in the threshold's own bin are estimated: here at most one square's worth.
        np.testing.assert_allclose(one_pass.iou, exact.iou, atol=0.03)
        np.testing.assert_array_equal(one_pass.assigned, exact.assigned)


def test_overlapping_masks_are_tallied_part_by_part():
    dataset = SquareFaces(12)

    class Overlapping(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            item = dict(dataset[index])
            item["masks"] = torch.cat([item["masks"], item["masks"][:1] | item["masks"][1:]])  # overlaps both
            return item

    stats = collect_activations(PixelDetector(), loader_of(Overlapping()), progress=False)
    exact = part_iou(
        PixelDetector(), loader_of(Overlapping()), stats.thresholds, ["a", "b", "c"], progress=False
    )
    intersection, map_area, part_area = stats.iou_tallies
    np.testing.assert_allclose(intersection[0, 2], intersection[0, 0] + intersection[0, 1], atol=1e-6)
    np.testing.assert_allclose(part_area, [16 * 12, 16 * 12, 32 * 12])
    one_pass = part_iou_from_tallies(intersection, map_area, part_area, ["a", "b", "c"])
    np.testing.assert_allclose(one_pass.iou, exact.iou, atol=0.05)


def test_a_one_cell_peak_falls_below_the_raw_quantile_once_upsampled():
    # Network Dissection thresholds upsampled maps at the quantile of the *raw* maps: a map that is a
    # single lit cell loses 1 - 0.875^2 of its peak to bilinear upsampling and drops below it.
    dataset = SquareFaces(40)
    model = BlobDetector()
    stats = collect_activations(model, loader_of(dataset), progress=False)
    result = part_iou(model, loader_of(dataset), stats.thresholds, dataset.part_names, progress=False)
    assert dataset.brightness.max() * 0.875**2 < stats.thresholds[0]
    assert result.iou[0, 0] == 0.0


def test_random_maps_have_low_iou():
    torch.manual_seed(0)
    activations = torch.rand(50, 4, GRID, GRID)
    masks = torch.zeros(50, 2, S, S, dtype=torch.bool)
    masks[:, 0, 8:16, 8:16] = True
    masks[:, 1, 20:28, 4:20] = True
    sketch = ChannelHistograms(4)
    sketch.update(activations.transpose(0, 1).reshape(4, -1))
    result = part_iou_from_tallies(
        *iou_tallies(activations, masks, sketch.quantile(0.995)), part_names=["a", "b"]
    )
    assert result.best_iou.max() < 0.04
    assert result.num_detectors == 0


def test_peak_hit_rate_needs_masks_and_ignores_unassigned_channels():
    stats = collect_activations(BlobDetector(), loader_of(SquareFaces(10)), progress=False)
    result = peak_hit_rate(stats, np.array([0, -1]))
    assert result.per_channel[0] == 1.0 and np.isnan(result.per_channel[1]) and result.mean == 1.0
    stats.part_hits = None
    with pytest.raises(ValueError, match="masks"):
        peak_hit_rate(stats, np.array([0, -1]))


def test_shift_images_translates_with_zero_fill():
    images = torch.arange(16.0).view(1, 1, 4, 4)
    shifted = shift_images(images, 1, 2)
    assert shifted[0, 0, 2, 1] == images[0, 0, 0, 0]
    assert shifted[0, 0, 3, 3] == images[0, 0, 1, 2]
    assert (shifted[0, 0, :2] == 0).all() and (shifted[0, 0, :, 0] == 0).all()
    assert torch.equal(shift_images(images, -1, 0)[..., :3], images[..., 1:])


def test_tracking_is_one_for_a_part_detector_and_zero_for_a_position_detector():
    dataset = SquareFaces(12)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    result = translation_tracking(BlobDetector(), images, batch_size=5)
    np.testing.assert_allclose(result.per_channel, [1.0, 0.0])
    assert result.mean == pytest.approx(0.5)
    assert result.fraction_tracking == pytest.approx(0.5)
    assert result.num_pairs[0] == 12 * 8


def test_tracking_counts_only_images_where_the_channel_fires_on_both():
    # Squares at the border leave the image under some shifts: those pairs do not count.
    dataset = SquareFaces(12, margin=0)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    result = translation_tracking(BlobDetector(), images, shifts=[(2, 0), (-2, 0)])
    assert result.per_channel[0] == 1.0
    assert result.num_pairs[0] < 24


def ibug_points(centre_x=56.0, centre_y=60.0):
    """A schematic 68-point face: two hexagonal eyes, brows, a nose and a 12-point mouth."""
    points = np.zeros((68, 2))
    points[:17] = np.stack([np.linspace(20, 92, 17), np.full(17, 80.0)], axis=1)  # jaw (unused)
    hexagon = np.stack([np.cos(np.arange(6) * np.pi / 3) * 8, np.sin(np.arange(6) * np.pi / 3) * 4], axis=1)
    points[36:42] = hexagon + [36, 45]
    points[42:48] = hexagon + [76, 45]
    points[17:22] = np.stack([np.linspace(26, 46, 5), np.full(5, 34.0)], axis=1)
    points[22:27] = np.stack([np.linspace(66, 86, 5), np.full(5, 34.0)], axis=1)
    points[27:31] = np.stack([np.full(4, 56.0), np.linspace(45, 62, 4)], axis=1)
    points[31:36] = np.stack([np.linspace(48, 64, 5), np.full(5, 66.0)], axis=1)
    angles = np.arange(12) * np.pi / 6
    points[48:60] = np.stack([np.cos(angles) * 14 + 56, np.sin(angles) * 5 + 82], axis=1)
    points[60:68] = points[48:56]
    return points + [centre_x - 56, centre_y - 60]


def test_landmark_part_masks_draw_each_part_where_its_points_are():
    points = ibug_points()
    masks = landmark_part_masks(points, 112)
    assert masks.shape == (6, 112, 112)
    left_eye, right_eye, left_brow, right_brow, nose, mouth = masks
    assert left_eye[45, 36] and not left_eye[45, 76] and right_eye[45, 76]
    assert left_brow[34, 36] and right_brow[34, 76] and not left_brow[45, 36]
    assert nose[60, 56] and mouth[82, 56] and not mouth[45, 36]
    assert 60 < left_eye.sum() < 140  # about the hexagon's area, 2 * 8 * 4 * 1.3
    points[37] = np.nan
    masks = landmark_part_masks(np.stack([points, ibug_points()]), (112, 112))
    assert masks.shape == (2, 6, 112, 112)
    assert not masks[0, 0].any() and masks[0, 1].any() and masks[1, 0].any()


def test_landmark_part_masks_wrapper_adds_masks():
    class Faces(torch.utils.data.Dataset):
        landmark_names = tuple(f"p{k}" for k in range(68))

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return {
                "image": torch.zeros(3, 112, 112),
                "landmarks": torch.tensor(ibug_points(), dtype=torch.float32),
            }

    wrapped = LandmarkPartMasks(Faces())
    assert wrapped.landmark_names == Faces.landmark_names
    assert wrapped[0]["masks"].shape == (6, 112, 112)
    # Through a DataLoader too, also around a Subset (whose __getitems__ must not be forwarded).
    batch = next(
        iter(torch.utils.data.DataLoader(LandmarkPartMasks(torch.utils.data.Subset(Faces(), [0, 1])), 2))
    )
    assert batch["masks"].shape == (2, 6, 112, 112)


def test_part_coverage_counts_and_entropy():
    coverage = part_coverage(np.array([0, 0, 1, 2, -1]), ["a", "b", "c", "d"])
    assert coverage["channels_per_part"] == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert coverage["entropy_bits"] == pytest.approx(1.5)
    assert coverage["normalised_entropy"] == pytest.approx(0.75)
    assert part_coverage(np.array([3, 3]), ["a", "b", "c", "d"])["entropy_bits"] == 0.0


def test_landmark_assignment_picks_the_landmark_the_peak_sits_on():
    stats = collect_activations(BlobDetector(), loader_of(SquareFaces(20)), progress=False)
    np.testing.assert_array_equal(landmark_assignment(stats, max_distance=0.05), [0, -1])


def test_explainability_metrics_reports_every_number():
    report = explainability_metrics(
        PixelDetector(), SquareFaces(24), batch_size=8, tracking_images=8, progress=False
    )
    assert report["num_images"] == 24
    assert report["location_instability"]["overall"] == pytest.approx(0.0, abs=1e-9)
    assert report["part_iou"]["num_detectors"] == 1
    assert report["peak_hit_rate"]["mean"] == 1.0
    assert report["translation_tracking"]["mean"] == 1.0
    assert "channels_per_part" in report["part_coverage"]
    report = explainability_report(
        BlobDetector(), SquareFaces(24), jitter=False, max_images=10, progress=False
    )
    assert report["original"]["num_images"] == 10


def test_explainability_report_on_jittered_images():
    data = pytest.importorskip("ecl.data")
    if not hasattr(data, "jittered"):
        pytest.skip("ecl.data.jittered is not available yet")
    report = explainability_report(
        BlobDetector(),
        SquareFaces(16),
        batch_size=8,
        tracking_images=4,
        max_images=12,
        progress=False,
        per_channel=True,
    )
    assert set(report) == {"original", "jittered"}
    assert report["jittered"]["num_images"] == 12
    # The jittered copy really moved the faces: the position detector's distances to them changed.
    original = report["original"]["location_instability"]["per_channel"]
    moved = report["jittered"]["location_instability"]["per_channel"]
    assert original[0] == pytest.approx(0.0, abs=1e-9)
    assert moved[1] != pytest.approx(original[1], rel=0.05)


class TwoEyes(torch.utils.data.Dataset):
    """Two bright squares (the eyes) at random places, their masks named left_eye and right_eye."""

    part_names = ("left_eye", "right_eye", "nose")

    def __init__(self, n=20, seed=0):
        rng = np.random.default_rng(seed)
        self.left = rng.integers(1, 3, size=(n, 2))
        self.right = self.left + np.array([rng.integers(0, 2), 4])  # at least 4 cells to the right

    def __len__(self):
        return len(self.left)

    def __getitem__(self, index):
        image = torch.zeros(3, S, S)
        masks = torch.zeros(3, S, S, dtype=torch.bool)
        for k, (i, j) in enumerate((self.left[index], self.right[index])):
            image[:, CELL * i : CELL * (i + 1), CELL * j : CELL * (j + 1)] = 1.0 - 0.1 * k
            masks[k] = image[0] == 1.0 - 0.1 * k
        return {"image": image, "label": index, "masks": masks, "index": index}


def test_bimodality_finds_a_channel_that_fires_on_both_eyes():
    from ecl.activations import second_peak_cells
    from ecl.metrics import bimodality

    stats = collect_activations(
        BlobDetector(), loader_of(TwoEyes()), progress=False, part_names=TwoEyes.part_names
    )
    result = bimodality(stats)
    # Channel 0 (brightness) fires on both eyes in every image; channel 1 (fixed position) has one peak.
    assert result.per_channel.tolist() == [1.0, 0.0]
    assert result.bimodal == pytest.approx(0.5) and result.both_eyes == pytest.approx(0.5)
    assert result.two_eye_channels == 1
    one_blob = torch.zeros(1, 1, 6, 6)
    one_blob[0, 0, 2:4, 2:4] = torch.tensor([[1.0, 0.9], [0.8, 0.7]])  # a blob, no second peak
    values, _ = second_peak_cells(one_blob, torch.tensor([[[2, 2]]]))
    assert values.item() == 0.0


def test_part_extents_measure_the_masks():
    from ecl.metrics import part_extents

    sizes = part_extents(SquareFaces(n=5))
    assert sizes["square"] == {"height": CELL, "width": CELL, "area": CELL * CELL}
    assert sizes["corner"]["area"] == 16.0


def test_histograms_take_channels_last_activations():
    # A model trained with run.channels_last returns channels_last maps; the pass must not need a copy.
    torch.manual_seed(0)
    maps = torch.rand(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    values = maps.transpose(0, 1).reshape(3, -1)
    assert not values.is_contiguous()
    hist, plain = ChannelHistograms(3), ChannelHistograms(3)
    hist.update(values)
    plain.update(values.contiguous())
    assert torch.equal(hist.hist, plain.hist)
