"""Tests of subsetlab.models: registry, seeded construction, architectures, check_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from subsetlab.config import ModelConfig
from subsetlab.errors import ConfigError, RegistryError
from subsetlab.models import (
    CifarResNet,
    SmallCNN,
    build_model,
    check_model,
    list_models,
    register_model,
    unregister_model,
)

# (name, options, input shape, classes): every built-in model on inputs it is meant for
CASES = [
    ("linear", {}, (64,), 10),
    ("linear", {}, (1, 8, 8), 10),
    ("mlp", {}, (1, 28, 28), 10),
    ("mlp", {"hidden": [32], "dropout": 0.2}, (20,), 3),
    ("cnn", {}, (1, 8, 8), 10),
    ("cnn", {}, (1, 28, 28), 10),
    ("cnn", {}, (3, 32, 32), 10),
    ("lenet", {}, (1, 28, 28), 10),
    ("lenet", {}, (1, 8, 8), 10),
    ("lenet", {"batchnorm": True, "activation": "tanh", "hidden": [32, 16], "dropout": 0.1}, (3, 32, 32), 10),
    ("resnet20", {}, (3, 32, 32), 10),
    ("resnet20", {"width": 0.5}, (1, 8, 8), 10),
    ("resnet18", {"width": 0.25}, (3, 32, 32), 100),
]
IDS = [f"{n}-{'x'.join(map(str, s))}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'default'}" for n, o, s, _ in CASES]


def _build(name, options, shape, classes, seed=0):
    return build_model(ModelConfig(name=name, options=options), shape, classes, seed)


def test_builtin_models_registered():
    assert {"linear", "mlp", "cnn", "lenet", "resnet20", "resnet18"} <= set(list_models())


def test_lenet_default_is_the_protocol_network():
    """conv 5x5 1->8, pool, conv 5x5 8->16, pool, fc 784->64, fc 64->10, no BatchNorm."""
    model = _build("lenet", {}, (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 8, (5, 5)), (8, 16, (5, 5))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(784, 64), (64, 10)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == (8 * 25 + 8) + (16 * 8 * 25 + 16) + (784 * 64 + 64) + (64 * 10 + 10)
    # channels-last is a memory layout, not another network: same weights, same outputs
    plain = _build("lenet", {"channels_last": False}, (1, 28, 28), 10)
    for a, b in zip(model.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model(x), plain(x), atol=1e-5)
    with pytest.raises(ConfigError, match="odd"):
        _build("lenet", {"kernel_size": 4}, (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"\[C, H, W\]"):
        _build("lenet", {}, (64,), 10)


@pytest.mark.parametrize("name,options,shape,classes", CASES, ids=IDS)
def test_model_shapes_last_linear_and_seeding(name, options, shape, classes):
    state = torch.get_rng_state()
    model = _build(name, options, shape, classes, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "build_model must not touch the global RNG"
    sd = {k: v.clone() for k, v in model.state_dict().items()}  # before forwards update BN stats
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())
    last = list(model.modules())[-1]
    assert isinstance(last, nn.Linear) and last.out_features == classes
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (4, classes)
    captured = []
    last.register_forward_hook(lambda m, i, o: captured.append(o))
    assert model(x) is captured[-1]  # the logits are exactly the last Linear's output
    check_model(model, shape, classes)

    same = _build(name, options, shape, classes, seed=3)
    other = _build(name, options, shape, classes, seed=4)
    sd_same, sd_other = same.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_same[k]) for k in sd)
    assert not torch.equal(last.weight, list(other.modules())[-1].weight)
    assert any(not torch.equal(sd[k], sd_other[k]) for k in sd if sd[k].is_floating_point())


@pytest.mark.parametrize("name,options,shape,classes", CASES[:8], ids=IDS[:8])
def test_every_parameter_gets_a_gradient(name, options, shape, classes):
    model = _build(name, options, shape, classes)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    F.cross_entropy(model(x), torch.arange(4) % classes).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mlp_layers_follow_options():
    model = _build("mlp", {"hidden": [16, 8], "dropout": 0.5}, (5,), 3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 16), (16, 8), (8, 3)]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    plain = _build("mlp", {}, (5,), 3)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_linear_model_is_logistic_regression():
    model = _build("linear", {}, (1, 8, 8), 10)
    assert [type(m) for m in model.children()] == [nn.Flatten, nn.Linear]
    assert model[1].in_features == 64


def test_cnn_handles_odd_and_tiny_images():
    for shape in [(1, 7, 7), (3, 5, 9), (2, 1, 1)]:
        model = _build("cnn", {}, shape, 4)
        assert isinstance(model, SmallCNN) and model(torch.zeros(2, *shape)).shape == (2, 4)
    deep = _build("cnn", {"channels": [8, 8, 8], "hidden": 16}, (1, 28, 28), 10)
    assert deep.fc.in_features == 16


def test_resnet_widths():
    r20 = _build("resnet20", {"width": 2}, (3, 32, 32), 10)
    assert isinstance(r20, CifarResNet) and r20.fc.in_features == 128
    assert sum(isinstance(m, nn.Conv2d) for m in r20.modules()) == 19 + 2  # 19 convs + 2 projections
    r18 = _build("resnet18", {"width": 0.25}, (3, 32, 32), 10)
    assert r18.fc.in_features == 128
    assert sum(isinstance(m, nn.Conv2d) for m in r18.modules()) == 17 + 3


def test_image_models_reject_flat_inputs():
    for name in ("cnn", "resnet20", "resnet18"):
        with pytest.raises(ConfigError, match="needs image inputs of shape"):
            _build(name, {}, (64,), 10)


def test_unknown_model_and_bad_options_are_named():
    with pytest.raises(ConfigError, match="Did you mean 'resnet20'"):
        _build("resnet-20", {}, (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="'depth'"):
        _build("resnet20", {"depth": 32}, (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="'hidden"):
        _build("mlp", {"hidden": [64, 0]}, (5,), 3)
    with pytest.raises(ConfigError, match="'dropout'"):
        _build("mlp", {"dropout": 1.0}, (5,), 3)
    with pytest.raises(ConfigError, match="'anything'"):
        _build("linear", {"anything": 1}, (5,), 3)
    with pytest.raises(ConfigError, match="num_classes must be >= 1"):
        _build("mlp", {}, (5,), 0)


def test_register_custom_model_and_duplicates():
    def builder(opts, shape, classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0], classes))

    register_model("tiny_custom")(builder)
    try:
        register_model("tiny_custom")(builder)
        with pytest.raises(RegistryError, match="already registered"):
            register_model("tiny_custom")(lambda o, s, c: None)
        model = _build("tiny_custom", {}, (3,), 2)
        assert model(torch.zeros(1, 3)).shape == (1, 2)
    finally:
        unregister_model("tiny_custom")
    assert "tiny_custom" not in list_models()


def test_builders_with_bad_results_are_reported():
    register_model("returns_string")(lambda o, s, c: "nope")
    register_model("softmax_head")(lambda o, s, c: nn.Sequential(nn.Linear(s[0], c), nn.Softmax(-1)))
    try:
        with pytest.raises(ConfigError, match=r"must return a torch\.nn\.Module"):
            _build("returns_string", {}, (3,), 2)
        with pytest.raises(ConfigError, match=r"not the output of its last registered nn\.Linear"):
            _build("softmax_head", {}, (3,), 2)
    finally:
        unregister_model("returns_string")
        unregister_model("softmax_head")


# --------------------------------------------------------------------------- check_model


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x), x


class _HeadFirst(nn.Module):
    """Output layer registered before a Linear that is never the output."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.proj = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.proj(x))


@pytest.mark.parametrize(
    "model,classes,match",
    [
        (nn.Sequential(nn.Linear(3, 2), nn.Softmax(-1)), 2, "something .* follows it"),
        (nn.Sequential(nn.Linear(3, 5)), 2, "out_features=5, but the data has 2 classes"),
        (_TupleOut(), 2, "returned a tuple"),
        (nn.Sequential(nn.Flatten(), nn.ReLU()), 2, "has no nn.Linear"),
        (_HeadFirst(), 2, "not the output of its last registered nn.Linear|out_features=4"),
        (nn.Sequential(nn.Linear(7, 2)), 2, "failed on a dummy batch of shape"),
        ("not a model", 2, "must be a torch.nn.Module"),
    ],
    ids=["softmax", "wrong-classes", "tuple", "no-linear", "head-first", "bad-shape", "not-module"],
)
def test_check_model_errors(model, classes, match):
    with pytest.raises(ConfigError, match=match):
        check_model(model, (3,), classes)


def test_check_model_leaves_mode_and_batchnorm_stats_alone():
    model = _build("cnn", {}, (1, 8, 8), 10)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    check_model(model, (1, 8, 8), 10)
    assert model.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    model.eval()
    check_model(model, (1, 8, 8), 10)
    assert not model.training
