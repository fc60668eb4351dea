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

    explainer = gradex.Explainer(Scaled().eval(), method="contrastive excitation")
    with pytest.raises(ValueError, match="contrastive excitation"):
        explainer(torch.randn(1, 3, 16, 16))
    # Plain excitation needs no classifier: the seed is the class itself.
    plain = gradex.Explainer(Scaled().eval(), method="excitation")
    assert plain(torch.randn(1, 3, 16, 16)).cam.sum() > 0


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


# -- the model during a call, and what a call leaves behind ---------------------------------------


def _small_mlp_model():
    torch.manual_seed(5)
    model = MlpHead().eval()
    with torch.no_grad():
        model.features[4].running_mean.uniform_(-0.2, 0.2)
        model.features[4].running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("method", ["excitation", "contrastive excitation"])
def test_the_model_is_never_changed_during_a_call(method):
    # Another thread using the model sees it only through its modules: a hook of the user's on
    # every weighted layer stands for it, and must see each layer's own parameters, every time
    # it runs (and run once per forward: the excitation rule never calls the user's module).
    model = _small_mlp_model()
    own = {module: dict(module.named_parameters(recurse=False)) for module in model.modules()}
    values = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen = []

    def watch(module, inputs, output):
        params = dict(module.named_parameters(recurse=False))
        same = params.keys() == own[module].keys() and all(
            params[k] is own[module][k] for k in params
        )
        seen.append((module, same))

    watched = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(watch) for m in watched]
    try:
        explainer = gradex.Explainer(model, method=method, target_layer="features.5")
        explainer(torch.randn(2, 3, 16, 16), target=[1, 3])
    finally:
        for handle in handles:
            handle.remove()
    assert all(same for _, same in seen), [type(m).__name__ for m, same in seen if not same]
    # discovery's forward and the explanation's forward: each layer ran exactly twice
    assert sorted(map(id, (m for m, _ in seen))) == sorted(map(id, watched * 2))
    for name, p in model.named_parameters():
        assert torch.equal(p, values[name]), name


def test_no_excitation_state_outlives_a_call():
    import gc

    from gradex import excitation

    model = _small_mlp_model()
    x = torch.randn(2, 3, 16, 16)
    for method in ("excitation", "contrastive excitation"):
        explainer = gradex.Explainer(model, method=method, target_layer="features.5")
        for _ in range(3):
            explainer(x)
        with pytest.raises(ValueError, match="out of range"):  # fails after the forward
            explainer(x, target=99)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is excitation._State]
    assert alive == []


def test_excitation_hooks_are_removed_when_registering_them_fails():
    from gradex.excitation import ExcitationHooks

    class TakesNoHooks(nn.ReLU):
        def register_forward_hook(self, *args, **kwargs):
            raise RuntimeError("this module takes no hooks")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), TakesNoHooks())
    with pytest.raises(RuntimeError, match="takes no hooks"), ExcitationHooks(model):
        pass
    assert all(not m._forward_hooks for m in model.modules())
