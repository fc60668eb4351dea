"""Excitation backprop and its contrastive form: closed forms, mass conservation, a clean model
afterwards, the errors, and the static path."""

import pytest
import torch
from models_zoo import get
from torch import nn

import gradex
from gradex.synthetic import load_model, make_images


def gap_closed_form(activations, weight, labels, negate=False):
    """EB at the last map of a global-average-pool + linear model, written out: each position's
    share of the class's positive-weight excitation."""
    w = (-weight if negate else weight).clamp_min(0)[labels]  # (B,C)
    per_position = w[:, :, None, None] * activations / activations[0, 0].numel()
    return per_position.sum(1, keepdim=True) / (w * activations.mean((2, 3))).sum(1).view(
        -1, 1, 1, 1
    )


@pytest.fixture(scope="module")
def synthetic():
    return load_model(0), make_images(6, 123)


def test_excitation_on_a_gap_head_equals_the_closed_form(synthetic):
    model, data = synthetic
    exp = gradex.Explainer(model, method="excitation")(data.images, target=data.labels)
    last = gradex.Explainer(model).capture(data.images).activations[-1]
    expected = gap_closed_form(last, model.fc.weight.detach(), data.labels)
    torch.testing.assert_close(exp.cam, expected, rtol=1e-5, atol=1e-7)
    # The mass the class sends down is conserved: one unit per image.
    torch.testing.assert_close(exp.cam.sum((1, 2, 3)), torch.ones(6), rtol=1e-5, atol=0)
    assert exp.saliency.shape == (6, 1, 64, 64)
    assert exp.saliency.min() == 0 and exp.saliency.max() == 1


def test_contrastive_excitation_subtracts_the_negated_class(synthetic):
    model, data = synthetic
    exp = gradex.Explainer(model, method="contrastive excitation")(data.images, target=data.labels)
    last = gradex.Explainer(model).capture(data.images).activations[-1]
    weight = model.fc.weight.detach()
    positive = gap_closed_form(last, weight, data.labels)
    negative = gap_closed_form(last, weight, data.labels, negate=True)
    torch.testing.assert_close(exp.cam, (positive - negative).clamp_min(0), rtol=1e-5, atol=1e-7)
    plain = gradex.Explainer(model, method="excitation")(data.images, target=data.labels)
    assert (exp.cam - plain.cam).abs().max() > 1e-3  # the contrast does change the map


class MlpHead(nn.Module):
    """A VGG-like model: the mass crosses max pooling, BatchNorm, two hidden linear layers with
    ReLU and dropout before it reaches the last feature map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(12 * 4 * 4, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(32, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def test_mass_is_conserved_through_an_mlp_head():
    torch.manual_seed(3)
    model = MlpHead().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.features[4].running_mean.uniform_(-0.2, 0.2)
        model.features[4].running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 16, 16)
    explainer = gradex.Explainer(model, method="excitation", target_layer="features.5")
    exp = explainer(x, target=torch.tensor([0, 1, 2, 3]))
    assert exp.cam.shape == (4, 1, 8, 8)
    # Exactly conserved wherever every unit on the way is excited by something (as here).
    torch.testing.assert_close(exp.cam.sum((1, 2, 3)), torch.ones(4), rtol=1e-4, atol=0)


def test_model_is_left_as_it_was(synthetic):
    model, data = synthetic
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("excitation", "contrastive excitation"):
        gradex.Explainer(model, method=method)(data.images)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_excitation_runs_on_resnet_and_efficientnet_lite0():
    from gradex.models import load_lite0

    for model in (get("resnet18"), load_lite0()):
        exp = gradex.Explainer(model, method="excitation")(torch.randn(2, 3, 64, 64))
        torch.testing.assert_close(exp.cam.sum((1, 2, 3)), torch.ones(2), rtol=1e-4, atol=0)
        contrast = gradex.Explainer(model, method="c-eb")(torch.randn(2, 3, 64, 64))
        assert torch.isfinite(contrast.saliency).all()


def test_contrastive_needs_the_classifiers_own_output():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MlpHead().eval()

        def forward(self, x):
            return self.inner(x) * 2.0

    explainer = gradex.Explainer(Scaled(), method="contrastive excitation")
    with pytest.raises(ValueError, match="contrastive excitation"):
        explainer(torch.randn(1, 3, 16, 16))
    # Plain excitation needs no classifier: the seed is the class itself.
    assert gradex.Explainer(Scaled(), method="excitation")(torch.randn(1, 3, 16, 16)).cam.sum() > 0


def test_a_callable_target_is_refused(synthetic):
    model, data = synthetic
    with pytest.raises(TypeError, match="target"):
        gradex.Explainer(model, method="excitation")(data.images, target=lambda z: z[:, 0])


def test_mixed_precision_forward_keeps_the_rule_in_float32(synthetic):
    model, data = synthetic
    for method in ("excitation", "contrastive excitation"):
        fp32 = gradex.Explainer(model, method=method)(data.images, target=data.labels)
        bf16 = gradex.Explainer(model, method=method, amp_dtype=torch.bfloat16)(
            data.images, target=data.labels
        )
        assert bf16.cam.dtype == torch.float32
        if method == "excitation":  # the mass is still conserved
            torch.testing.assert_close(bf16.cam.sum((1, 2, 3)), torch.ones(6), rtol=1e-3, atol=0)
        # bf16 activations: the same map up to bf16 rounding
        assert (bf16.cam - fp32.cam).abs().max() < 0.05 * fp32.cam.max()


def test_static_explainer_equals_eager(synthetic):
    model, data = synthetic
    for method in ("excitation", "contrastive excitation"):
        explainer = gradex.Explainer(model, method=method)
        fast = explainer.static(data.images)
        eager = explainer(data.images, target=data.labels)
        replayed = fast(data.images, target=data.labels)
        assert torch.equal(replayed.saliency, eager.saliency)
        assert torch.equal(replayed.cam, eager.cam)
