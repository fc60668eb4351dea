"""Transformers (timm, random weights, 64x64): layouts recognised, attention never read as a map,
Swin explained across its stages, ViT's Grad-CAM on its patch tokens and its GE refused."""

import pytest
import torch
from models_zoo import get_timm
from torch import nn

import gradex
from gradex.capture import CHANNELS_LAST, TOKENS, trace

pytest.importorskip("timm")

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _reference_gradcam(model, module, to_nchw, x, target):
    """Grad-CAM written out by hand, as pytorch-grad-cam does it with a reshape_transform: the
    module's output in a full autograd forward, the target logit's gradient, both reshaped."""
    kept = []
    handle = module.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.gather(1, target.unsqueeze(1)).sum()
    (grad,) = torch.autograd.grad(score, kept[-1])
    activations, grads = to_nchw(kept[-1].detach()), to_nchw(grad)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1, keepdim=True).clamp_min(0)


def _patch_tokens(prefix, grid):
    def to_nchw(tokens):
        patches = tokens[:, prefix:]
        return patches.reshape(tokens.shape[0], *grid, tokens.shape[-1]).permute(0, 3, 1, 2)

    return to_nchw


def _refs(layers):
    return [str(layers.target.ref)] + [str(s.ref) for s in layers.stages]


def test_swin_is_explained_across_its_stages_never_at_an_attention_matrix():
    model = get_timm("swin")
    explainer = gradex.Explainer(model)
    layers = explainer.layers_for(X)
    assert str(layers.target.ref) == "layers.3"
    assert [str(s.ref) for s in layers.stages] == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert [s.shape[-1] for s in layers.stages] == [16, 8, 4, 2]
    assert all(e.layout == CHANNELS_LAST for e in [layers.target, *layers.stages])
    assert "attn" not in explainer.describe(64)
    exp = explainer(X)
    assert exp.saliency.shape == (2, 1, 64, 64) and exp.cam.shape == (2, 1, 2, 2)
    assert torch.isfinite(exp.saliency).all() and exp.saliency.amax() == 1
    # The CAM is Grad-CAM on the last stage's (B,H,W,C) map read as (B,C,H,W).
    expected = _reference_gradcam(
        model, model.layers[3], lambda t: t.permute(0, 3, 1, 2), X, exp.target
    )
    torch.testing.assert_close(exp.cam, expected, rtol=1e-4, atol=1e-6)


def test_swin_stages_feed_extrapolate_and_an_explicit_stage_is_read_channels_last():
    model = get_timm("swin")
    captured = gradex.Explainer(model).capture(X)
    assert [tuple(a.shape) for a in captured.activations] == [
        (2, 16, 16, 16),
        (2, 32, 8, 8),
        (2, 64, 4, 4),
        (2, 128, 2, 2),
    ]
    heatmap = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)) + 0.1
    saliency = gradex.extrapolate(heatmap, captured.activations, output_size=(64, 64))
    assert saliency.shape == (2, 1, 64, 64) and torch.isfinite(saliency).all()
    exp = gradex.Explainer(model, target_layer="layers.2").__call__(X)
    assert exp.cam.shape == (2, 1, 4, 4)


def test_attention_tensors_are_recognised_and_never_feature_maps():
    traced = trace(get_timm("swin"), X[:1])
    softmax = [e for e in traced if e.module_type == "Softmax"]
    assert softmax and all(e.attention for e in softmax)
    # Swin's last stage has one 4x4 window at this size: its (1, heads, 4, 4) probabilities
    # have the batch's first dimension and a plausible grid, and are still attention.
    assert any(e.shape[0] == 1 and e.ref.name.startswith("layers.3") for e in softmax)
    tokens = [e for e in traced if e.layout == TOKENS]
    assert tokens and all(e.shape[-2:] == (16, 16) for e in tokens if e.ref.name == "layers.0")


@pytest.mark.parametrize(
    "key, target, prefix",
    [
        ("vit", "blocks.0", 1),
        ("vit_registers", "blocks.0", 5),
        ("vit_avg", "blocks.1", 0),
        ("cait", "blocks.1", 0),  # its class token joins after the patch blocks
    ],
)
def test_vit_gradcam_on_its_patch_tokens(key, target, prefix):
    """Grad-CAM on the last block the score reads, on the 8x8 patch grid: with a class token
    the head reads only that token, so the last block's own patch tokens carry no gradient and
    the block before it (the last block's input) is the target."""
    model = get_timm(key)
    explainer = gradex.Explainer(model, gradual=False)
    layers = explainer.layers_for(X)
    assert str(layers.target.ref) == target
    assert layers.target.layout == TOKENS and layers.target.prefix == prefix
    assert layers.target.shape[-2:] == (8, 8)
    exp = explainer(X)
    assert exp.cam.shape == (2, 1, 8, 8) and exp.saliency.shape == (2, 1, 64, 64)
    assert bool((exp.cam > 0).any())  # a real gradient reached the patch tokens
    module = model.get_submodule(target)
    expected = _reference_gradcam(model, module, _patch_tokens(prefix, (8, 8)), X, exp.target)
    torch.testing.assert_close(exp.cam, expected, rtol=1e-4, atol=1e-6)


def test_a_vit_returning_a_dict_is_read_through_output_as_the_bare_vit():
    """Discovery's probe reads the score through output=: a ViT behind a dict output gets the
    same target as the bare ViT, not the last block's patch tokens, which no logit reads."""
    vit = get_timm("vit")

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            return {"logits": self.vit(x)}

    explainer = gradex.Explainer(Wrapped().eval(), gradual=False, output="logits")
    assert str(explainer.layers_for(X).target.ref) == "vit.blocks.0"
    bare = gradex.Explainer(vit, gradual=False)(X)
    torch.testing.assert_close(explainer(X).cam, bare.cam)


def test_vit_refuses_gradual_extrapolation_and_says_why():
    with pytest.raises(ValueError) as info:
        gradex.Explainer(get_timm("vit"))(X)
    message = str(info.value)
    assert "one grid" in message and "no finer feature map" in message
    assert "gradual=False" in message


def test_maxvit_reads_no_attention_and_no_channels_last_map_as_channels_first():
    model = get_timm("maxvit")
    explainer = gradex.Explainer(model)
    layers = explainer.layers_for(X)
    assert not any(".attn" in ref for ref in _refs(layers))
    assert [s.shape[-1] for s in layers.stages] == [32, 16, 8, 4, 2]
    traced = trace(model, X[:1])
    inside_attention = [e for e in traced if ".attn_block." in e.ref.name]
    assert inside_attention and all(
        e.attention or e.layout == CHANNELS_LAST for e in inside_attention
    )
    exp = explainer(X)
    assert torch.isfinite(exp.saliency).all() and exp.saliency.shape == (2, 1, 64, 64)


class OnlyAttentionIsFourD(nn.Module):
    """Rows of the image as three tokens, mixed by self-attention: its only 4-D tensor is the
    (B,1,3,3) attention matrix, which an 8x8 input makes look like a 3x3 map."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(64, 16)
        self.softmax = nn.Softmax(dim=-1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        tokens = self.embed(x.flatten(2))  # (B, 3 colour channels as tokens, 16)
        scores = (tokens @ tokens.transpose(1, 2)).unsqueeze(1) / 4
        mixed = (self.softmax(scores).squeeze(1) @ tokens).mean(dim=1)
        return self.head(mixed)


def test_a_model_whose_only_maps_are_attention_is_refused():
    model = OnlyAttentionIsFourD().eval()
    with pytest.raises(ValueError, match="no layer with a spatial output"):
        gradex.Explainer(model).layers_for(torch.randn(1, 3, 8, 8))


def test_torchvision_swin_is_read_by_its_stages_not_by_its_final_permute():
    """torchvision's Swin ends its features in channels-last and turns them to (B,C,H,W) with a
    Permute leaf before pooling: the deepest block decides that it is a transformer."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=5).eval()
    layers = gradex.Explainer(model).layers_for(X)
    assert str(layers.target.ref) == "features.7"
    assert [str(s.ref) for s in layers.stages] == [
        "features.1",
        "features.3",
        "features.5",
        "features.7",
    ]


def test_an_attention_tensor_named_as_the_target_is_refused():
    explainer = gradex.Explainer(get_timm("swin"), target_layer="layers.3.blocks.0.attn.softmax")
    with pytest.raises(ValueError, match=r"target_layer: .* is an attention tensor"):
        explainer.layers_for(X)
