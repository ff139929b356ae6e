"""The classical stage's own parts: the one-pixel shifted copies and the calibration splits that keep
an image with its copies (tasks/classical.py). The stage inside a run is tested in test_classification."""
import numpy as np
import pytest

from kagglekit_nb.metrics import get_metric
from kagglekit_nb.tasks import classical


def _rows(images: np.ndarray) -> np.ndarray:
    """pixel_features-shaped rows: the flattened HWC pixels, then a mean and a contrast column."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    return np.concatenate([flat, np.full((len(images), 2), [0.25, 0.5], np.float32)], axis=1)


def test_shifted_moves_every_image_one_pixel_with_the_edge_repeated():
    img = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    out = classical.shifted(_rows(img), channels=1)
    assert out.shape == (5, 11)
    np.testing.assert_array_equal(out[0, :9], np.arange(9))
    moved = {s: out[1 + i, :9].reshape(3, 3) for i, s in enumerate(classical.SHIFTS)}
    np.testing.assert_array_equal(moved[(0, 1)], [[1, 2, 2], [4, 5, 5], [7, 8, 8]])    # content moves left
    np.testing.assert_array_equal(moved[(0, -1)], [[0, 0, 1], [3, 3, 4], [6, 6, 7]])
    np.testing.assert_array_equal(moved[(1, 0)], [[3, 4, 5], [6, 7, 8], [6, 7, 8]])
    np.testing.assert_array_equal(moved[(-1, 0)], [[0, 1, 2], [0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(out[:, 9:], np.tile([0.25, 0.5], (5, 1)))  # mean and contrast kept


def test_shifted_keeps_colour_planes_apart_and_refuses_other_rows():
    img = np.stack([np.zeros((4, 4)), np.ones((4, 4)), 2 * np.ones((4, 4))], -1)[None]  # HWC
    out = classical.shifted(_rows(img), channels=3)
    np.testing.assert_array_equal(out[:, :48].reshape(5, 4, 4, 3)[..., 2], 2.0)
    with pytest.raises(ValueError, match="not 3-channel pixel_features"):
        classical.shifted(np.zeros((2, 12)), channels=3)


def test_calibration_splits_keep_an_image_and_its_copies_on_one_side():
    y = np.repeat([0, 1, 2], 6)
    copies = 1 + len(classical.SHIFTS)
    splits = classical._calibration_splits(y, copies, seed=0)
    assert len(splits) == 3
    for fit, cal in splits:
        assert not set(fit % len(y)) & set(cal % len(y))
        assert set(np.tile(y, copies)[cal]) == {0, 1, 2}


def test_the_svm_learns_from_the_copies_only_while_they_fit():
    rng = np.random.default_rng(0)
    X = _rows(rng.random((30, 4, 4, 1)))
    y = np.repeat([0, 1, 2], 10)
    with_copies = classical._fit(X, y, seed=0, channels=1)
    assert with_copies.steps[0][1].n_samples_seen_ == 150
    assert classical._fit(X, y, seed=0, channels=None).steps[0][1].n_samples_seen_ == 30  # not pixels
    assert classical.uses_shifts(classical.SHIFT_MAX_ROWS // 5, multilabel=False)
    assert not classical.uses_shifts(classical.SHIFT_MAX_ROWS // 5 + 1, multilabel=False)
    assert not classical.uses_shifts(10, multilabel=True)


def test_copies_teach_an_svm_that_a_pattern_may_move():
    """A bar's orientation on 6x6 pixels, each training bar in one of two places, test bars one pixel
    away: without copies an RBF SVM matches pixels and misses some; with them it classifies all."""
    def bar(vertical: bool, at: int) -> np.ndarray:
        img = np.zeros((6, 6, 1), np.float32)
        if vertical:
            img[1:5, at] = 1
        else:
            img[at, 1:5] = 1
        return img

    X = _rows(np.stack([bar(v, at) for v in (False, True) for at in (1, 4) for _ in range(6)]))
    y = np.repeat([0, 1], 12)
    X_test = _rows(np.stack([bar(v, at) for v in (False, True) for at in (2, 3)]))
    y_test = np.repeat([0, 1], 2)
    folds = np.tile(np.arange(3), 8)
    accuracy = get_metric("accuracy")
    plain = classical.fit_predict(X, y, folds, X_test, n_classes=2, metric=accuracy, channels=None)
    moved = classical.fit_predict(X, y, folds, X_test, n_classes=2, metric=accuracy, channels=1)
    assert accuracy(y_test, moved.test) == 1.0
    assert accuracy(y_test, plain.test) < 1.0
