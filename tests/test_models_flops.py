import pytest
import torch

from cascade import count_flops, create_model
from cascade.models import list_models


def test_vgg16_cifar_matches_paper_convention():
    flops, params = count_flops(create_model("vgg16_cifar", num_classes=10), (3, 32, 32))
    assert abs(flops - 313e6) / 313e6 < 0.01
    assert abs(params - 14.98e6) / 14.98e6 < 0.005


def test_flops_scale_quadratically_with_width():
    full, _ = count_flops(create_model("resnet56_cifar"), (3, 32, 32))
    half, _ = count_flops(create_model("resnet56_cifar", width=0.5), (3, 32, 32))
    assert 0.2 < half / full < 0.3  # conv MACs ~ width^2; the stem and fc scale linearly


@pytest.mark.parametrize("name", ["vgg16_cifar", "resnet56_cifar", "torchvision:resnet18", "torchvision:mobilenet_v2"])
def test_registry_builds_models_with_num_classes(name):
    m = create_model(name, num_classes=7, width=0.25).eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown torchvision"):
        create_model("torchvision:nope")
    assert "resnet50" in list_models()
