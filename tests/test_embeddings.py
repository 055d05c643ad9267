"""The closed-form embedder against autograd, on several model shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from subsetlab.data.base import IndexedDataset
from subsetlab.embeddings import GradientEmbedder, find_last_linear, last_layer_grads
from subsetlab.errors import ConfigError


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a plain forward, no special signature
        h = self.pool(F.relu(self.bn(self.conv(x))))
        return self.head(torch.flatten(h, 1))


class Nested(nn.Module):
    """The output Linear sits inside a Sequential inside a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 7), nn.Tanh())
        self.out = nn.Sequential(nn.Dropout(0.0), nn.Sequential(nn.Linear(7, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    return [
        ("mlp", mlp, torch.randn(9, 3, 4), 4),
        ("cnn", TinyCNN(5), torch.randn(9, 1, 6, 6), 5),
        ("nested", Nested(), torch.randn(9, 6), 3),
    ]


def _autograd_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    last = find_last_linear(model)
    rows_b, rows_w, losses = [], [], []
    model.eval()
    for i in range(x.shape[0]):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        rows_b.append(last.bias.grad.clone())
        rows_w.append(last.weight.grad.clone().flatten())
        losses.append(loss.detach())
    return torch.stack(rows_b), torch.stack(rows_w), torch.stack(losses)


@pytest.mark.parametrize("name,model,x,classes", _models(), ids=lambda v: v if isinstance(v, str) else "")
def test_embeddings_match_autograd(name, model, x, classes):
    y = torch.arange(x.shape[0]) % classes
    data = IndexedDataset(x, y, classes)
    ref_b, ref_w, ref_loss = _autograd_reference(model, x, y)
    emb = GradientEmbedder(model, "cpu", batch_size=4)  # 3 chunks of 4, 4 and 1
    out_b = emb.embed(data, kind="bias")
    out_bw = emb.embed(data, kind="bias_weight")
    assert out_b.grads.shape == (9, classes)
    assert out_bw.grads.shape == (9, classes + classes * emb.feature_dim)
    torch.testing.assert_close(out_b.grads, ref_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_bw.grads[:, :classes], ref_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_bw.grads[:, classes:], ref_w, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_b.losses, ref_loss, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(out_b.preds, model(x).argmax(1))


def test_embed_subset_indices_and_order():
    _, model, x, classes = _models()[0]
    y = torch.arange(x.shape[0]) % classes
    data = IndexedDataset(x, y, classes)
    emb = GradientEmbedder(model, "cpu", batch_size=2)
    full = emb.embed(data)
    idx = torch.tensor([7, 2, 2, 5])
    part = emb.embed(data, idx, return_features=True, return_logits=True)
    torch.testing.assert_close(part.grads, full.grads[idx])
    assert torch.equal(part.indices, idx) and torch.equal(part.labels, y[idx])
    assert part.features.shape == (4, emb.feature_dim) and part.logits.shape == (4, classes)


def test_embedder_restores_training_mode_and_uses_no_grad():
    _, model, x, classes = _models()[1]
    data = IndexedDataset(x, torch.zeros(9, dtype=torch.long), classes)
    model.train()
    out = GradientEmbedder(model, "cpu").embed(data)
    assert model.training
    assert not out.grads.requires_grad


def test_last_layer_grads_closed_form_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math_log3 := 1.0986122886681098, 0.0]])
    y = torch.tensor([0, 1])
    g = last_layer_grads(logits, y)
    # softmax([0,0]) = [.5,.5]; softmax([ln 3, 0]) = [.75, .25]
    torch.testing.assert_close(g, torch.tensor([[-0.5, 0.5], [0.75, -0.75]]))
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    gw = last_layer_grads(logits, y, h, kind="bias_weight")
    torch.testing.assert_close(gw[0, 2:], torch.tensor([-0.5, -1.0, 0.5, 1.0]))
    assert math_log3 > 0


def test_model_with_final_activation_is_refused():
    model = nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))
    data = IndexedDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="last nn.Linear"):
        GradientEmbedder(model, "cpu").embed(data)


def test_model_without_linear_is_refused():
    with pytest.raises(ConfigError, match="no nn.Linear"):
        GradientEmbedder(nn.Sequential(nn.Conv2d(1, 1, 1)), "cpu")


def test_float16_is_ignored_on_cpu():
    model = nn.Linear(3, 2)
    assert GradientEmbedder(model, "cpu", dtype=torch.float16).dtype == torch.float32
