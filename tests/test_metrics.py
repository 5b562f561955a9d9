"""Specification of imgcls.evaluate.metrics and imgcls.evaluate.plots."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from imgcls.evaluate.metrics import (
    multi_label_metrics,
    reliability_bins,
    single_label_metrics,
    tune_thresholds,
)
from imgcls.evaluate.plots import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_pr_curves,
    plot_reliability,
    write_confusion_csv,
)

# sklearn's UndefinedMetricWarning and matplotlib's layout warnings would both mean a bug here
pytestmark = pytest.mark.filterwarnings("error")


def probs_for(predicted: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Softmax-like rows that put `confidence` on the predicted class and share the rest."""
    probs = np.full((len(predicted), n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def class_names(n: int) -> list[str]:
    return [f"class_{i:03d}" for i in range(n)]


# --- single-label -------------------------------------------------------------------------


def test_perfect_predictions_give_accuracy_one_and_a_diagonal_confusion_matrix():
    y_true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    result = single_label_metrics(y_true, probs_for(y_true.tolist(), 4), ["a", "b", "c", "d"])

    assert result["accuracy"] == 1.0
    assert np.array_equal(result["confusion_matrix"], np.diag([2, 2, 2, 2]))
    assert all(scores["f1"] == 1.0 for scores in result["per_class"].values())
    assert result["most_confused"] == []


def test_hand_computed_case_with_a_class_never_predicted():
    # true:      a a b b c c
    # predicted: a b b b a a   -> 'c' is never predicted
    y_true = np.array([0, 0, 1, 1, 2, 2])
    result = single_label_metrics(y_true, probs_for([0, 1, 1, 1, 0, 0], 3), ["a", "b", "c"])

    assert result["task"] == "single-label"
    assert result["n_images"] == 6
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    assert result["per_class"]["a"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    assert result["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert result["macro_avg"]["recall"] == pytest.approx(0.5)
    assert result["weighted_avg"]["support"] == 6
    assert "c" in result["classification_report"]


def test_a_class_absent_from_the_test_split_still_has_its_row_and_column():
    result = single_label_metrics(np.array([0, 0, 1]), probs_for([0, 1, 1], 3), ["a", "b", "absent"])

    assert np.shape(result["confusion_matrix"]) == (3, 3)
    assert result["per_class"]["absent"]["support"] == 0
    assert np.isfinite(result["log_loss"])


def test_most_confused_lists_the_largest_off_diagonal_pair_first():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    predicted = [1, 0, 0, 1, 0, 0, 0, 2]  # c->a three times, a->b and b->a once each
    result = single_label_metrics(y_true, probs_for(predicted, 3), ["a", "b", "c"])

    assert result["most_confused"][0] == {"true": "c", "predicted": "a", "count": 3}
    assert [pair["count"] for pair in result["most_confused"]] == [3, 1, 1]


def test_most_confused_is_capped_at_ten_pairs():
    y_true = np.repeat(np.arange(12), 2)
    predicted = ((y_true + 1) % 12).tolist()  # every class mistaken for the next: 12 pairs
    result = single_label_metrics(y_true, probs_for(predicted, 12), class_names(12))

    assert len(result["most_confused"]) == 10


def test_top_k_accuracy_is_monotone_in_k_and_reports_only_k_below_the_class_count():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=300)
    y_true = rng.integers(0, 6, size=300)
    result = single_label_metrics(y_true, probs, class_names(6), top_k=(1, 3, 5, 6, 10))

    top_k = result["top_k_accuracy"]
    assert list(top_k) == ["3", "5"]
    assert result["accuracy"] <= top_k["3"] <= top_k["5"] <= 1.0
    assert top_k["5"] > top_k["3"] > result["accuracy"]  # random scores: each extra guess helps


def test_top_k_accuracy_is_one_when_the_true_class_is_never_ranked_last():
    y_true = np.array([0, 1, 2, 0])
    probs = np.array([[0.3, 0.5, 0.2], [0.4, 0.35, 0.25], [0.6, 0.1, 0.3], [0.3, 0.6, 0.1]])
    result = single_label_metrics(y_true, probs, ["a", "b", "c"], top_k=(2,))

    assert result["accuracy"] == 0.0
    assert result["top_k_accuracy"] == {"2": 1.0}


def test_float32_softmax_output_is_accepted_without_warnings():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 7)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = single_label_metrics(rng.integers(0, 7, size=50), probs, class_names(7))

    assert result["log_loss"] > 0


def test_logits_are_rejected_with_a_message_that_names_the_fix():
    logits = np.random.default_rng(2).normal(size=(5, 3))
    with pytest.raises(ValueError, match="softmax"):
        single_label_metrics(np.zeros(5, dtype=int), logits, ["a", "b", "c"])


def test_mismatched_class_count_is_rejected_with_the_shapes():
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        single_label_metrics(np.zeros(5, dtype=int), probs_for([0] * 5, 3), ["a", "b"])


# --- calibration --------------------------------------------------------------------------


def test_ece_is_near_zero_when_labels_are_drawn_from_the_stated_probabilities():
    rng = np.random.default_rng(3)
    n, n_classes = 20_000, 4
    probs = rng.dirichlet(np.full(n_classes, 0.5), size=n)
    y_true = np.array([rng.choice(n_classes, p=row) for row in probs])
    result = single_label_metrics(y_true, probs, class_names(n_classes))

    assert result["ece"] < 0.02


def test_ece_is_large_for_over_confident_predictions():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 3, size=600)  # labels unrelated to the predictions: accuracy ~1/3
    result = single_label_metrics(y_true, probs_for([0] * 600, 3, confidence=0.98), ["a", "b", "c"])

    assert result["ece"] == pytest.approx(0.98 - np.mean(y_true == 0))
    assert result["ece"] > 0.5


def test_reliability_bins_count_every_image_once_and_leave_empty_bins_as_none():
    y_true = np.array([0, 0, 1, 1])
    probs = probs_for([0, 0, 0, 1], 2, confidence=0.9)
    bins = reliability_bins(y_true, probs, n_bins=10)

    assert len(bins["bin_edges"]) == 11
    assert sum(bins["count"]) == 4
    assert bins["count"][8] == 4  # 0.9 falls in (0.8, 0.9]
    assert bins["confidence"][8] == pytest.approx(0.9)
    assert bins["accuracy"][8] == pytest.approx(0.75)
    assert bins["accuracy"][0] is None


# --- multi-label --------------------------------------------------------------------------


def test_multi_label_map_is_one_for_perfectly_ranked_scores():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, size=(40, 5))
    y_true[0] = 1  # every class has a positive
    probs = np.where(y_true == 1, rng.uniform(0.6, 1.0, y_true.shape), rng.uniform(0.0, 0.4, y_true.shape))
    result = multi_label_metrics(y_true, probs, class_names(5), np.full(5, 0.5))

    assert result["task"] == "multi-label"
    assert result["mAP"] == pytest.approx(1.0)
    assert result["accuracy"] == 1.0
    assert result["micro_f1"] == result["macro_f1"] == 1.0


def test_multi_label_accuracy_is_exact_match_and_uses_each_class_threshold():
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.35, 0.1], [0.8, 0.2, 0.1]])
    thresholds = np.array([0.5, 0.3, 0.5])  # 0.35 counts for 'b'; 0.2 does not
    result = multi_label_metrics(y_true, probs, ["a", "b", "c"], thresholds)

    assert result["accuracy"] == pytest.approx(2 / 3)  # the third image misses 'b'
    assert result["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert result["per_class"]["b"]["threshold"] == pytest.approx(0.3)


def test_a_class_without_positives_has_no_ap_and_is_left_out_of_map():
    y_true = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.6], [0.1, 0.2], [0.8, 0.1]])
    result = multi_label_metrics(y_true, probs, ["present", "never"], np.full(2, 0.5))

    assert result["per_class"]["never"]["ap"] is None
    assert result["mAP"] == pytest.approx(1.0)


def test_tuned_thresholds_beat_one_half_when_scores_are_shifted_low():
    rng = np.random.default_rng(6)
    positive = rng.random(400) < 0.3
    shifted = np.where(positive, rng.normal(0.3, 0.05, 400), rng.normal(0.1, 0.05, 400)).clip(0.001, 0.999)
    y_true = np.stack([positive, np.zeros(400, dtype=bool)], axis=1).astype(int)
    probs = np.stack([shifted, rng.uniform(0, 1, 400)], axis=1)
    thresholds = tune_thresholds(y_true, probs, default=0.5)

    assert 0.1 < thresholds[0] < 0.3
    assert thresholds[1] == 0.5  # no positives: keeps the default
    assert f1_score(y_true[:, 0], probs[:, 0] >= thresholds[0]) > 0.9
    assert f1_score(y_true[:, 0], probs[:, 0] >= 0.5, zero_division=0) == 0.0


def test_tuned_thresholds_stay_strictly_inside_zero_one():
    y_true = np.array([[1], [0], [1]])
    probs = np.array([[1.0], [0.0], [1.0]])
    (threshold,) = tune_thresholds(y_true, probs)

    assert 0.0 < threshold < 1.0
    assert np.array_equal(probs[:, 0] >= threshold, y_true[:, 0] == 1)


def test_metric_dicts_are_json_serialisable():
    rng = np.random.default_rng(7)
    single = single_label_metrics(rng.integers(0, 4, 30), rng.dirichlet(np.ones(4), 30), class_names(4))
    y_multi = rng.integers(0, 2, size=(30, 4))
    y_multi[:, 3] = 0  # an undefined AP must serialise too
    multi = multi_label_metrics(y_multi, rng.random((30, 4)), class_names(4), np.full(4, 0.5))

    for result in (single, multi, reliability_bins(rng.integers(0, 4, 30), rng.dirichlet(np.ones(4), 30))):
        assert json.loads(json.dumps(result)) == result


# --- plots ----------------------------------------------------------------------------------


def assert_png(path) -> None:
    assert path.stat().st_size > 0
    reference = path.parent / "reference"
    reference.write_bytes(b"")
    assert path.stat().st_mode == reference.stat().st_mode, "file mode should follow the umask like any new file"
    reference.unlink()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"


@pytest.mark.parametrize("n_classes", [2, 60])
def test_confusion_matrix_plot_is_a_png_for_few_and_many_classes(tmp_path, n_classes):
    confusion = np.random.default_rng(8).integers(0, 30, size=(n_classes, n_classes))
    confusion[-1] = 0  # a class with no test images must not divide by zero
    path = plot_confusion_matrix(confusion.tolist(), class_names(n_classes), tmp_path / "new" / "confusion.png")

    assert path == tmp_path / "new" / "confusion.png"
    assert_png(path)


def test_confusion_matrix_grows_with_the_class_count(tmp_path):
    small = plot_confusion_matrix(np.eye(2, dtype=int), class_names(2), tmp_path / "small.png")
    large = plot_confusion_matrix(np.eye(60, dtype=int), class_names(60), tmp_path / "large.png", normalize=False)

    with Image.open(small) as small_image, Image.open(large) as large_image:
        assert large_image.width > 2 * small_image.width


@pytest.mark.parametrize("n_classes", [2, 60])
def test_pr_curves_plot_is_a_png_for_few_and_many_classes(tmp_path, n_classes):
    rng = np.random.default_rng(9)
    y_true = rng.integers(0, 2, size=(80, n_classes))
    y_true[:, 0] = 0  # a class without positives is skipped, not an error
    path = plot_pr_curves(y_true, rng.random((80, n_classes)), class_names(n_classes), tmp_path / "pr.png")

    assert_png(path)


@pytest.mark.parametrize("n_classes", [2, 60])
def test_reliability_plot_is_a_png(tmp_path, n_classes):
    rng = np.random.default_rng(10)
    bins = reliability_bins(rng.integers(0, n_classes, 200), rng.dirichlet(np.ones(n_classes), 200))
    assert_png(plot_reliability(bins, tmp_path / "plots" / "reliability.png"))


def test_learning_curves_accept_strings_as_read_from_history_csv(tmp_path):
    text = (
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr\n"
        "1,1.20,0.55,1.10,0.60,0.001\n"
        "2,0.80,0.70,0.90,0.68,0.001\n"
        "3,0.60,0.78,0.85,0.71,0.0005\n"
    )
    history = list(csv.DictReader(io.StringIO(text)))
    assert_png(plot_learning_curves(history, tmp_path / "curves.png"))


def test_learning_curves_tolerate_missing_validation_columns_and_empty_cells(tmp_path):
    history = [
        {"epoch": "1", "train_loss": "1.0", "train_accuracy": ""},
        {"epoch": 2, "train_loss": 0.7},
        {"train_loss": "0.5", "train_accuracy": "0.8"},
    ]
    assert_png(plot_learning_curves(history, tmp_path / "curves.png"))


def test_confusion_csv_has_a_header_and_one_row_per_true_class(tmp_path):
    path = write_confusion_csv([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "out" / "confusion.csv")

    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["true\\predicted", "cat", "dog"], ["cat", "3", "1"], ["dog", "0", "4"]]


def test_confusion_writers_reject_a_matrix_that_does_not_match_the_classes(tmp_path):
    with pytest.raises(ValueError, match="2x2"):
        write_confusion_csv([[1, 2, 3]], ["cat", "dog"], tmp_path / "confusion.csv")
    assert not (tmp_path / "confusion.csv").exists()
