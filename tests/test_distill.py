"""Specification of `imgcls train --distill-from TEACHER`: a model trained on a teacher bundle's softened answers
as well as on the labels, with the teacher recorded in the bundle it saves."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAST_CONFIG
from imgcls.cli.main import main
from imgcls.models.builtin import CnnBn
from imgcls.models.bundle import BundleConfig, build_classifier, read_bundle_config, save_bundle
from imgcls.train.config import TrainConfig
from imgcls.train.distill import TEACHER_BATCH, DistillationLoss, soft_targets
from imgcls.train.run import train


def labelled_batch(classes: int = 5, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits, one-hot labels and teacher logits of a batch."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (rows,), generator=generator)
    return (torch.randn(rows, classes, generator=generator), F.one_hot(labels, classes).float(),
            3 * torch.randn(rows, classes, generator=generator))


def test_a_distilled_run_trains_and_records_its_teacher_in_the_bundle(trained_run, digits_dir, tmp_path):
    result = train(digits_dir, tmp_path / "student", TrainConfig.from_options(FAST_CONFIG, distill_from=str(trained_run.run_dir)),
                   progress=False)
    settings = read_bundle_config(result.bundle_dir).settings
    assert settings["distill_from"] == str(trained_run.run_dir.resolve())
    assert settings["distill_temperature"] == 4.0 and settings["distill_alpha"] == 0.9
    assert result.metrics["accuracy"] > 0.3  # ten classes: chance is 0.1


def test_the_teacher_runs_once_over_the_training_images_not_at_every_step(trained_run, digits_dir, tmp_path,
                                                                          monkeypatch):
    teacher_batches = 0
    original_forward = CnnBn.forward

    def counting_forward(self, x):
        nonlocal teacher_batches
        teacher_batches += 1
        return original_forward(self, x)

    monkeypatch.setattr(CnnBn, "forward", counting_forward)  # the teacher is a cnn-bn, the student a lenet5
    config = TrainConfig.from_options(**{**FAST_CONFIG, "model": "lenet5", "distill_from": str(trained_run.run_dir)})
    train(digits_dir, tmp_path / "student", config, progress=False)
    assert teacher_batches == -(-210 // TEACHER_BATCH)  # 210 training images, no gradients, once


def test_a_teacher_trained_on_other_classes_is_refused_in_one_line(digits_dir, tmp_path, capsys):
    config = BundleConfig(architecture="cnn-bn", classes=["ant", "bee", "cicada"], img_size=32, mean=(0.5,), std=(0.25,))
    teacher = save_bundle(build_classifier(config).eval(), config, tmp_path / "insects" / "model")
    code = main(["train", str(digits_dir), "--out", str(tmp_path / "student"), "--distill-from", str(teacher),
                 "--model", "cnn-bn", "--img-size", "32", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "other classes" in err and "ant, bee, cicada" in err
    assert not (tmp_path / "student" / "checkpoint.pt").exists()  # refused before training


@pytest.mark.parametrize("option, value", [("--distill-alpha", "1.5"), ("--distill-temperature", "0")])
def test_distillation_settings_out_of_range_are_usage_errors(digits_dir, tmp_path, capsys, option, value):
    code = main(["train", str(digits_dir), "--out", str(tmp_path / "student"), "--distill-from", str(tmp_path), option, value])
    assert code == 2 and option in capsys.readouterr().err


def test_with_alpha_zero_the_loss_is_the_labels_cross_entropy():
    student, labels, teacher = labelled_batch()
    loss = DistillationLoss(nn.CrossEntropyLoss(), alpha=0.0, temperature=4.0)
    targets = soft_targets(labels, (teacher / 4.0).softmax(1))
    assert torch.allclose(loss(student, targets), F.cross_entropy(student, labels.argmax(1)))


def test_with_alpha_one_a_student_answering_as_the_teacher_has_no_loss():
    _, labels, teacher = labelled_batch()
    loss = DistillationLoss(nn.CrossEntropyLoss(), alpha=1.0, temperature=4.0)
    assert loss(teacher, soft_targets(labels, (teacher / 4.0).softmax(1))).abs() < 1e-6
    assert loss(-teacher, soft_targets(labels, (teacher / 4.0).softmax(1))) > 0.1


def test_validation_targets_without_teacher_columns_get_the_labels_loss_alone():
    student, labels, _ = labelled_batch()
    loss = DistillationLoss(nn.CrossEntropyLoss(), alpha=0.9, temperature=4.0)
    assert torch.allclose(loss(student, labels), F.cross_entropy(student, labels.argmax(1)))
