"""Mean teacher: EMA with warm-up, noisy inputs, the MSE term, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_hybridseg.core.methods.teacher import MeanTeacher


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_warm_up_makes_the_first_update_a_copy_then_decay_rises_to_its_cap():
    student = net()
    teacher = MeanTeacher(student, decay=0.99)
    decays = [teacher.current_decay()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    decays.append(teacher.update(student))
    for t, s in zip(teacher.model.parameters(), student.parameters()):
        torch.testing.assert_close(t, s)
    for _ in range(300):
        decays.append(teacher.update(student))
    assert decays[:4] == [0.0, 0.0, 0.5, pytest.approx(2 / 3)]
    assert decays[-1] == 0.99 and max(decays) == 0.99


def test_update_is_an_exponential_moving_average():
    student = net()
    teacher = MeanTeacher(student, decay=0.9)
    teacher.step = 1000  # past the warm-up
    before = [p.clone() for p in teacher.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(-2.0)
    d = teacher.update(student)
    assert d == 0.9
    for t, b, s in zip(teacher.model.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_mse_pulls_only_the_student_and_teacher_sees_noisy_inputs():
    student = net()
    teacher = MeanTeacher(student, noise_std=0.02)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        student[3].bias.add_(torch.tensor([1.0, -1.0]))
    loss = teacher.mse(student(x), x)
    assert loss.ndim == 0 and float(loss) > 0
    loss.backward()
    assert student[0].weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    quiet = MeanTeacher(student, noise_std=0.0)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(quiet.probabilities(x), quiet.probabilities(x))
    assert not torch.equal(teacher.probabilities(x, g), quiet.probabilities(x))


def test_state_round_trips_so_the_warm_up_continues_after_resume():
    student = net()
    teacher = MeanTeacher(student)
    for _ in range(5):
        teacher.update(student)
    again = MeanTeacher(net())
    again.load_state_dict(teacher.state_dict())
    assert again.step == 5 and again.current_decay() == teacher.current_decay()
    for a, b in zip(again.model.state_dict().values(), teacher.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="decay"):
        MeanTeacher(net(), decay=1.0)
    with pytest.raises(ValueError, match="noise"):
        MeanTeacher(net(), noise_std=-1)
