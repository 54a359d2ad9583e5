"""A torchvision user's transforms in fmq_loader.ImageFolder (issue 15): the one-line switch.

These run where torchvision is installed (it is optional, and the CPU torch these machines
pin has no matching torchvision build: see docs/install.md, "torchvision"); elsewhere they skip.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.transforms import v2  # noqa: E402

from _images import image_folder  # noqa: E402
from fmq_loader import FMQLoader, ImageFolder  # noqa: E402
from fmq_loader.images.tvcompat import accelerate, torchvision_crop_params  # noqa: E402


def test_crop_parameters_are_drawn_as_torchvision_draws_them():
    from PIL import Image

    img = Image.new("RGB", (500, 375))
    rrc = v2.RandomResizedCrop(224, scale=(0.2, 0.9))
    for seed in range(100):
        torch.manual_seed(seed)
        params = rrc.make_params([img]) if hasattr(rrc, "make_params") else rrc._get_params([img])
        torch.manual_seed(seed)
        assert torchvision_crop_params(500, 375, rrc.scale, rrc.ratio) == (
            params["top"], params["left"], params["height"], params["width"])


@pytest.mark.parametrize("head", ["crop", "resize"])
def test_the_same_compose_gives_torchvisions_shapes_dtypes_and_values(tmp_path, head):
    root = image_folder(tmp_path / "d", classes=2, per_class=6, size=(160, 120))
    first = (v2.RandomResizedCrop(64) if head == "crop" else v2.Resize(72))
    transform = v2.Compose([first, v2.RandomHorizontalFlip(), v2.CenterCrop(64), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    theirs = torchvision.datasets.ImageFolder(str(root), transform=transform)
    ours = ImageFolder(root, transform=transform)
    assert accelerate(transform) is not None and ours.transform is transform
    for i in range(len(ours)):
        torch.manual_seed(i)
        a, la = theirs[i]
        torch.manual_seed(i)
        b, lb = ours[i]
        assert (a.shape, a.dtype, la) == (b.shape, b.dtype, lb)
        # within the fused resize's tolerance: 2 levels of 255 per pixel, here x4 by Normalize
        assert (a - b).abs().mean() * 0.25 * 255 < 1.0


def test_an_unrecognised_head_is_applied_unchanged(tmp_path):
    root = image_folder(tmp_path / "d", classes=1, per_class=2, size=(64, 48))
    transform = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(32)])  # head on a tensor
    assert accelerate(transform) is None
    assert accelerate(v2.Compose([v2.RandomResizedCrop(32, interpolation=v2.InterpolationMode.NEAREST)])) is None
    torch.manual_seed(0)
    a = torchvision.datasets.ImageFolder(str(root), transform=transform)[0][0]
    torch.manual_seed(0)
    b = ImageFolder(root, transform=transform)[0][0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fmqloader_batches_of_the_switched_script(tmp_path, method):
    root = image_folder(tmp_path / "d", classes=2, per_class=8, size=(96, 72))
    transform = v2.Compose([v2.RandomResizedCrop(48), v2.RandomHorizontalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True)])
    with FMQLoader(ImageFolder(root, transform=transform), batch_size=4, num_workers=2,
                   shuffle=True, multiprocessing_context=method) as loader:
        batches = list(loader)
    assert len(batches) == 4
    images, labels = batches[0]
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
