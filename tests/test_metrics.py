"""gradex.metrics on cases whose answer is known: a perfect map, an inverted map, a constant map,
and toy models whose decision is known; SSIM and Spearman against scikit-image and SciPy."""

import pytest
import torch
from models_zoo import TinyCNN
from torch import nn

import gradex
from gradex import metrics

SIZE = 32


def square_mask(batch=2, top=8, left=12, side=10):
    mask = torch.zeros(batch, SIZE, SIZE)
    mask[:, top : top + side, left : left + side] = 1
    return mask


def test_energy_in_mask():
    mask = square_mask()
    area = mask[0].mean()
    torch.testing.assert_close(metrics.energy_in_mask(mask, mask), torch.ones(2))
    torch.testing.assert_close(metrics.energy_in_mask(1 - mask, mask), torch.zeros(2))
    torch.testing.assert_close(
        metrics.energy_in_mask(torch.full_like(mask, 0.3), mask), area.expand(2)
    )
    torch.testing.assert_close(metrics.energy_in_mask(torch.zeros_like(mask), mask), torch.zeros(2))
    # only positive saliency is evidence: negative values outside the mask change nothing
    signed = mask - 2 * (1 - mask)
    torch.testing.assert_close(metrics.energy_in_mask(signed.unsqueeze(1), mask), torch.ones(2))


def test_pointing_game():
    mask = square_mask(top=8, left=12, side=10)  # rows 8..17, cols 12..21
    peak_at = lambda y, x: torch.zeros(2, SIZE, SIZE).index_put_(  # noqa: E731
        (torch.arange(2), torch.tensor([y, y]), torch.tensor([x, x])), torch.tensor(1.0)
    )
    assert metrics.pointing_game(peak_at(10, 15), mask).all()
    # 10 px right of the mask's last column: a hit at 15 px, a miss at 5 px
    assert metrics.pointing_game(peak_at(10, 31), mask, tolerance=15).all()
    assert not metrics.pointing_game(peak_at(10, 31), mask, tolerance=5).any()
    assert not metrics.pointing_game(torch.full((2, SIZE, SIZE), 0.5), mask).any()  # no peak
    assert not metrics.pointing_game(peak_at(10, 15), torch.zeros_like(mask)).any()  # no object


def test_grid_localisation():
    cells = torch.tensor([0, 3])
    masks = metrics.grid_cell_masks(2, (SIZE, SIZE), cells)
    assert masks[0, :16, :16].all() and masks[0].sum() == 16 * 16
    assert masks[1, 16:, 16:].all() and masks[1].sum() == 16 * 16
    torch.testing.assert_close(metrics.grid_localisation(masks, cells), torch.ones(2))
    torch.testing.assert_close(metrics.grid_localisation(1 - masks, cells), torch.zeros(2))
    torch.testing.assert_close(
        metrics.grid_localisation(torch.ones(2, 1, SIZE, SIZE), cells), torch.full((2,), 0.25)
    )
    with pytest.raises(ValueError, match="cells must be in"):
        metrics.grid_localisation(masks, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="does not split into a 2x2 grid"):
        metrics.grid_localisation(torch.ones(2, 31, 32), cells)


def test_trapezoid_auc():
    line = torch.linspace(1, 0, 11).view(1, -1)
    torch.testing.assert_close(metrics.trapezoid_auc(line), torch.tensor([0.5]))
    torch.testing.assert_close(metrics.trapezoid_auc(torch.ones(3, 5)), torch.ones(3))


class RegionModel(nn.Module):
    """Class 0's logit is 8 × the mean of channel 0 inside a fixed region; class 1's is 0: the
    decision depends on that region alone, so the right map is known."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region)

    def forward(self, x):
        inside = (x[:, 0] * self.region).flatten(1).sum(1) / self.region.sum()
        return torch.stack([8 * inside, torch.zeros_like(inside)], dim=1)


def test_deletion_and_insertion_rank_the_right_map_first():
    mask = square_mask(batch=1)[0]
    model = RegionModel(mask)
    x = torch.rand(2, 3, SIZE, SIZE) * 0.2 + mask  # bright object on a dim background
    target = torch.zeros(2, dtype=torch.long)
    perfect, inverted = mask.expand(2, -1, -1), (1 - mask).expand(2, -1, -1)
    constant = torch.full((2, SIZE, SIZE), 0.5)
    deletion = {
        name: metrics.deletion_insertion(model, x, m, target, "deletion", step=16)
        for name, m in (("perfect", perfect), ("constant", constant), ("inverted", inverted))
    }
    auc = {name: value[0] for name, value in deletion.items()}
    assert (auc["perfect"] < auc["constant"]).all() and (auc["constant"] < auc["inverted"]).all()
    curves = deletion["perfect"][1]
    assert curves.shape == (2, SIZE * SIZE // 16 + 1)
    torch.testing.assert_close(curves[:, 0], model(x).softmax(1)[:, 0])
    torch.testing.assert_close(curves[:, -1], torch.full((2,), 0.5))  # all pixels at baseline 0
    insertion = {
        name: metrics.deletion_insertion(model, x, m, target, "insertion", step=16)[0]
        for name, m in (("perfect", perfect), ("inverted", inverted))
    }
    assert (insertion["perfect"] > insertion["inverted"]).all()


def test_average_drop_and_increase():
    mask = square_mask(batch=1)[0]
    model = RegionModel(mask)
    x = torch.rand(2, 3, SIZE, SIZE) * 0.2 + mask
    target = torch.zeros(2, dtype=torch.long)
    drop, increase = metrics.average_drop_increase(model, x, torch.ones(2, SIZE, SIZE), target)
    torch.testing.assert_close(drop, torch.zeros(2))
    assert not increase.any()
    y = model(x).softmax(1)[:, 0]
    drop, increase = metrics.average_drop_increase(model, x, torch.zeros(2, SIZE, SIZE), target)
    torch.testing.assert_close(drop, (y - 0.5) / y)
    with pytest.raises(ValueError, match=r"saliency must lie in \[0, 1\]"):
        metrics.average_drop_increase(model, x, torch.full((2, SIZE, SIZE), 2.0), target)


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 20, 20, generator=generator)
    b = (torch.rand(3, 20, 20, generator=generator) * 4).round()  # many ties
    got = metrics.spearman(a, b)
    for i in range(3):
        expected = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert got[i].item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(metrics.spearman(a, a.exp()), torch.ones(3))
    torch.testing.assert_close(metrics.spearman(a, -a), -torch.ones(3))
    torch.testing.assert_close(metrics.spearman(a, torch.ones_like(a)), torch.zeros(3))


def test_ssim_against_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 36, generator=generator)
    b = (a + 0.3 * torch.rand(2, 40, 36, generator=generator)).clamp(0, 1)
    got = metrics.ssim(a, b)
    for i in range(2):
        expected = skimage_metrics.structural_similarity(
            a[i].double().numpy(),
            b[i].double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert got[i].item() == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(metrics.ssim(a, a), torch.ones(2))


def test_sobel_edges_and_pearson():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # a vertical step between columns 3 and 4
    edges = metrics.sobel_edges(x)
    assert (edges[0, :, 3:5] > 0).all() and (edges[0, :, :3] == 0).all()
    assert (edges[0, :, 5:] == 0).all()
    a = torch.rand(2, 8, 8)
    torch.testing.assert_close(metrics.pearson(a, 3 * a + 1), torch.ones(2))
    torch.testing.assert_close(metrics.pearson(a, torch.ones_like(a)), torch.zeros(2))


def test_cascading_randomisation_decorrelates_gradcam_but_not_an_edge_detector():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(4, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def gradcam_ge(m, images):
        return gradex.Explainer(m)(images, target=0).saliency

    steps = metrics.cascading_randomisation(model, gradcam_ge, x)
    assert [s["randomised"] for s in steps] == ["fc", "stage3", "stage2", "stage1"]
    assert steps[-1]["spearman"].mean() < 0.9  # all layers random: the map has changed
    assert all(s["spearman"].shape == (4,) and s["ssim"].shape == (4,) for s in steps)
    for name, value in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[name]), name

    def edges(m, images):  # ignores the model: the check must show it
        return metrics.sobel_edges(images)

    steps = metrics.cascading_randomisation(model, edges, x)
    torch.testing.assert_close(steps[-1]["spearman"], torch.ones(4))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: metrics.energy_in_mask(torch.ones(2, 8, 8), torch.ones(2, 8, 9)), ValueError,
         "mask has shape (2, 8, 9) but saliency has (2, 8, 8)"),
        (lambda: metrics.energy_in_mask(torch.ones(2, 3, 8, 8), torch.ones(2, 8, 8)), ValueError,
         "saliency must have shape (B,1,H,W) or (B,H,W)"),
        (lambda: metrics.energy_in_mask(torch.full((1, 8, 8), float("nan")), torch.ones(1, 8, 8)),
         ValueError, "saliency contains NaN"),
        (lambda: metrics.energy_in_mask([1.0], torch.ones(1, 8, 8)), TypeError,
         "saliency must be a torch.Tensor"),
        (lambda: metrics.pointing_game(torch.ones(1, 8, 8), torch.ones(1, 8, 8), -1), ValueError,
         "tolerance must be >= 0"),
        (lambda: metrics.deletion_insertion(nn.Identity(), torch.ones(1, 3, 8, 8),
                                            torch.ones(1, 8, 8), [0], mode="both"),
         ValueError, "mode must be 'deletion' or 'insertion'"),
        (lambda: metrics.deletion_insertion(nn.Identity(), torch.ones(1, 3, 8, 8),
                                            torch.ones(1, 8, 7), [0]),
         ValueError, "saliency must match x"),
        (lambda: metrics.ssim(torch.ones(1, 8, 8), torch.ones(1, 8, 8)), ValueError,
         "at least 11 pixels"),
        (lambda: metrics.cascading_randomisation(nn.ReLU(), lambda m, x: x[:, 0],
                                                 torch.ones(1, 3, 8, 8)),
         ValueError, "no layer with parameters"),
    ],
)  # fmt: skip
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
