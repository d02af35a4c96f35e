"""Batch augmentation: each transform does what it says, per image, and only in training."""

from __future__ import annotations

import pytest
import torch

from fmnist_lab.augment import BatchAugment, random_crop, random_erasing, random_flip


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    # Distinct, asymmetric images so that a flip or a shift is always visible.
    return torch.rand(512, 1, 28, 28)


def test_flip_mirrors_about_half_the_images_independently(images):
    out = random_flip(images)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())  # each image is either untouched or mirrored
    assert 0.4 < mirrored.float().mean().item() < 0.6
    assert not torch.equal(mirrored, random_flip(images) == images.flip(-1))


def find_shift(original: torch.Tensor, shifted: torch.Tensor, padding: int):
    padded = torch.nn.functional.pad(original, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            if torch.equal(padded[..., dy : dy + 28, dx : dx + 28], shifted):
                return dy, dx
    return None


def test_crop_translates_each_image_by_its_own_offset(images):
    out = random_crop(images, padding=3)
    assert out.shape == images.shape
    shifts = [find_shift(images[i], out[i], 3) for i in range(64)]
    assert all(s is not None for s in shifts)
    assert len(set(shifts)) > 10  # offsets are drawn per image
    assert {dy for dy, _ in shifts} == set(range(7))


def test_erasing_blacks_out_one_rectangle_per_chosen_image(images):
    out = random_erasing(images, p=0.5)
    changed = (out != images).flatten(1).any(1)
    assert 0.35 < changed.float().mean().item() < 0.65
    for i in changed.nonzero().flatten()[:50].tolist():
        erased = out[i, 0] != images[i, 0]
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        box = out[i, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool((box == 0).all())  # one solid black rectangle
        area = box.numel() / (28 * 28)
        assert 0.01 <= area <= 0.4
    assert torch.equal(random_erasing(images, p=0.0), images)


def test_augment_is_identity_in_eval_mode_and_combines_in_training(images):
    augment = BatchAugment(flip=True, crop_padding=2, erasing_p=0.5)
    augment.eval()
    assert torch.equal(augment(images), images)
    augment.train()
    out = augment(images)
    assert out.shape == images.shape
    assert (out != images).flatten(1).any(1).float().mean().item() > 0.9
    assert not BatchAugment().active and augment.active


def test_augment_rejects_bad_settings():
    with pytest.raises(ValueError):
        BatchAugment(crop_padding=-1)
    with pytest.raises(ValueError):
        BatchAugment(erasing_p=1.5)
