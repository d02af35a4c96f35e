"""Model zoo: every config builds, runs forward, and has the parameter count it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmnist_lab.errors import UserError
from fmnist_lab.models import build_model, count_params
from fmnist_lab.models import resnet as resnet_module
from fmnist_lab.models.convnet import ConvNet

from .conftest import CONF

# The counts the configs really have (README's table lists them next to the reported ones).
PARAMS = {
    "mlp_r1": 203_530,
    "mlp_r2": 238_314,
    "r3_cnn": 32_167_818,
    "conv2dnet": 3_232_906,
    "conv2dsimple": 451_370,
    "conv2dsimple2": 623_242,
    "conv2dsimple3": 5_629_514,
    "inception_cnn": 20_211_414,
    "resnet18": 11_172_810,
    "convnet": 421_738,
    "convnet_20k": 20_538,
    "convnet_100k": 104_426,
}


def test_every_model_config_is_pinned():
    assert {p.stem for p in (CONF / "model").glob("*.yaml")} == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_forward_and_parameter_count(make_cfg, name):
    net = build_model(make_cfg(f"model={name}").model)
    assert count_params(net) == PARAMS[name]
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    net.train()
    net(torch.rand(4, 1, 28, 28)).sum().backward()  # trains: gradients reach every parameter
    assert all(p.grad is not None for p in net.parameters())


def test_r2_mlp_is_784_256_128_32_10(make_cfg):
    net = build_model(make_cfg("model=mlp_r2").model)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256), (256, 128), (128, 32), (32, 10),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=[8, 16, 32], residual=True, convs_per_block=2),
        dict(filters=[8, 16], head="gap", fc=[]),
        dict(filters=[8, 16, 16], separable=True, residual=True, convs_per_block=2, head="gap"),
        dict(filters=[8, 8, 8, 8], pool=["max", "avg", "none", "max"], dropout=[0.1, 0, 0, 0.2]),
        dict(filters=[4], kernel_size=5, batch_norm=False, fc=[32, 16], fc_dropout=0.5),
    ],
)
def test_convnet_family_variants(kwargs):
    net = ConvNet(**kwargs)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_convnet_counts_follow_its_settings():
    # One 3x3 conv block of 8 filters with batch norm, pooled to 14x14, straight to 10 classes.
    net = ConvNet(filters=[8], fc=[])
    assert count_params(net) == (9 * 8) + (2 * 8) + (8 * 14 * 14 * 10 + 10)
    gap = ConvNet(filters=[8], fc=[], head="gap")
    assert count_params(gap) == (9 * 8) + (2 * 8) + (8 * 10 + 10)
    # Separable: the first conv sees one channel and stays whole; the second is a depthwise
    # 3x3 (9 weights per channel) and a 1x1 pointwise 8 -> 16.
    sep = ConvNet(filters=[8, 16], fc=[], head="gap", separable=True)
    assert count_params(sep) == (9 * 8 + 2 * 8) + (8 * 9 + 8 * 16 + 2 * 16) + (16 * 10 + 10)
    whole = ConvNet(filters=[8, 16], fc=[], head="gap")
    assert count_params(whole) - count_params(sep) == 8 * 16 * 9 - (8 * 9 + 8 * 16)


def test_pad_shortcut_passes_the_input_on_with_zero_channels_and_no_parameters(make_cfg):
    """model.shortcut=pad: a widening residual block adds its input, zero-padded to the new
    width, to the body's output; best_50k's three 1x1 projections (10,272 weights) go."""
    best = make_cfg("experiment=best_50k").model
    conv, pad = (
        build_model(best),
        build_model(make_cfg("experiment=best_50k", "model.shortcut=pad").model),
    )
    assert count_params(conv) - count_params(pad) == 1 * 32 + 32 * 64 + 64 * 128
    assert (
        count_params(
            build_model(
                make_cfg(
                    "experiment=best_50k", "model.shortcut=pad", "model.filters=[36,72,152]"
                ).model
            )
        )
        == 49_326
    )
    block = pad.features[1]  # 32 -> 64 channels
    x = torch.rand(2, 32, 14, 14)
    assert torch.equal(block.shortcut(x)[:, :32], x) and not block.shortcut(x)[:, 32:].any()
    for p in block.body.parameters():  # no body: the block is ReLU(pad(x)), pooled
        torch.nn.init.zeros_(p)
    expected = torch.nn.functional.max_pool2d(torch.cat([x, torch.zeros_like(x)], 1), 2)
    assert torch.equal(block.eval()(x), expected)
    pad.train()
    pad(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in pad.parameters())
    with pytest.raises(UserError, match="shortcut must be one of conv, pad, not 'none'"):
        build_model(make_cfg("model.residual=true", "model.shortcut=none").model)
    with pytest.raises(UserError, match="a 'pad' shortcut cannot narrow 64 channels to 32"):
        build_model(
            make_cfg("model.residual=true", "model.shortcut=pad", "model.filters=[64,32]").model
        )


def test_keras_init_starts_the_weights_as_keras_layers_do(make_cfg):
    """model.init=keras: Glorot-uniform weights (+/- sqrt(6 / (fan_in + fan_out))), zero
    biases, the same parameters; the default keeps PyTorch's narrower draw."""
    torch.manual_seed(0)
    plain = build_model(make_cfg("model=conv2dsimple2").model)
    keras = build_model(make_cfg("model=conv2dsimple2", "model.init=keras").model)
    assert count_params(keras) == count_params(plain)
    layers = [m for m in keras.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    defaults = [m for m in plain.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    for layer, default in zip(layers, defaults, strict=True):
        receptive = layer.weight[0, 0].numel()
        fan_in, fan_out = layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive
        limit = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.9 * limit
        assert not layer.bias.any() and default.bias.any()
        assert default.weight.abs().max() <= 1 / fan_in**0.5 + 1e-6  # PyTorch's bound
    with pytest.raises(UserError, match="model.init must be one of torch, keras, not 'glorot'"):
        build_model(make_cfg("model=conv2dsimple2", "model.init=glorot").model)


def test_too_many_poolings_is_refused_with_the_reason(make_cfg):
    with pytest.raises(ValueError, match="5 poolings shrink a 28x28 image below 1x1; at most 4"):
        ConvNet(filters=[4] * 5)
    ConvNet(filters=[4] * 5, pool=["max"] * 4 + ["none"])  # four fit
    with pytest.raises(UserError, match="model 'convnet' cannot be built: 6 poolings"):
        build_model(make_cfg("model.filters=[4,4,4,4,4,4]").model)


def test_resnet18_trains_from_scratch_and_says_so(make_cfg, caplog, monkeypatch):
    net = build_model(make_cfg("model=resnet18").model)
    assert net.weights == "scratch"
    assert "training from scratch" in caplog.text

    def unreachable(**_):
        raise OSError("no network")

    monkeypatch.setattr(resnet_module.ResNet18_Weights.IMAGENET1K_V1, "get_state_dict",
                        unreachable, raising=False)  # fmt: skip
    caplog.clear()
    net = build_model(make_cfg("model=resnet18", "model.pretrained=true").model)
    assert net.weights == "scratch"
    assert "ImageNet weights could not be loaded (no network)" in caplog.text


def test_model_configs_name_their_class(make_cfg):
    for path in (CONF / "model").glob("*.yaml"):
        cfg = make_cfg(f"model={Path(path).stem}").model
        assert cfg.name == path.stem and cfg._target_.startswith("fmnist_lab.models.")
