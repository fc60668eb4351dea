"""The synthetic testbed: images, masks and grids are exact and seeded; the shipped CNN classifies
them by the object (occlusion check); the training script runs."""

import pytest
import torch

from gradex import synthetic
from gradex.synthetic import occlusion, shapes, train


def test_images_are_seeded_balanced_and_their_masks_exact():
    a, b = synthetic.make_images(40, seed=3), synthetic.make_images(40, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, synthetic.make_images(40, seed=4).images)
    assert a.images.shape == (40, 3, 64, 64) and a.masks.shape == (40, 64, 64)
    assert torch.bincount(a.labels, minlength=len(synthetic.CLASSES)).tolist() == [8] * 5
    assert a.masks.flatten(1).any(1).all()  # every image has its object
    # Outside the mask the image is exactly its background; inside it differs from it.
    outside = ~a.masks.unsqueeze(1).expand_as(a.images)
    assert torch.equal(a.images[outside], a.backgrounds[outside])
    inside = a.masks.unsqueeze(1).expand_as(a.images)
    assert (a.images - a.backgrounds)[inside].abs().mean() > 0.5  # > 0.125 in [0, 1] pixels


@pytest.mark.parametrize("kind", shapes.CLASSES)
def test_each_shape_has_a_plausible_area(kind):
    r = 12.0
    mask = shapes._shape_mask(kind, 64, 32.0, 32.0, r, 0.3)
    area = mask.float().sum() / (torch.pi * r**2)  # relative to the enclosing circle
    assert 0.25 < area <= 1.02, (kind, float(area))
    assert not mask[:, :10].any() and not mask[:10].any()  # stays inside its radius


def test_grids_hold_four_distinct_classes_with_masks_in_their_cells():
    grids = synthetic.make_grids(6, seed=1)
    assert grids.images.shape == (6, 3, 128, 128) and grids.masks.shape == (6, 4, 128, 128)
    for labels in grids.labels:
        assert len(set(labels.tolist())) == 4
    for cell in range(4):
        row, col = divmod(cell, 2)
        inside = grids.masks[:, cell, row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64]
        assert inside.flatten(1).any(1).all()
        assert grids.masks[:, cell].sum() == inside.sum()  # nothing outside its cell


def test_bad_arguments():
    with pytest.raises(ValueError, match="count must be >= 1"):
        synthetic.make_images(0, seed=0)
    with pytest.raises(ValueError, match="size must be >= 32"):
        synthetic.make_images(4, seed=0, size=16)
    with pytest.raises(FileNotFoundError, match="python -m gradex.synthetic.train --seed 99"):
        synthetic.load_model(99)


@pytest.mark.parametrize("seed", synthetic.available_seeds())
def test_the_shipped_models_use_the_object(seed):
    check = occlusion.occlusion_check(synthetic.load_model(seed), synthetic.make_images(300, 77))
    assert check["accuracy"] > 0.95
    assert check["uses_the_object"], check


def test_at_least_three_seeds_ship():
    assert synthetic.available_seeds()[:3] == [0, 1, 2]


def test_training_runs_and_writes_loadable_weights(tmp_path):
    out = tmp_path / "cnn.pt"
    train.main(
        ["--seed", "5", "--epochs", "1", "--train", "256", "--batch", "64", "--out", str(out)]
    )
    state = torch.load(out, weights_only=True)
    model = synthetic.SyntheticCNN()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    assert out.with_suffix(".json").exists()
