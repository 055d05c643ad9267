"""Cost of the gradient embedder against a plain no-grad forward pass, measured in one run.

Target: the C-dim embedding costs at most 1.25x the forward pass over the same data and model
(the physical limit is 1.0x: the embedder *is* one forward pass plus O(N*C) arithmetic).

    python benchmarks/perf/embedder.py                 # Fashion-MNIST if installed, else same-sized random data
    python benchmarks/perf/embedder.py --n 20000 --model mlp --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from subsetlab.config import DataConfig, ModelConfig
from subsetlab.data.base import IndexedDataset
from subsetlab.embeddings import GradientEmbedder
from subsetlab.models import build_model
from subsetlab.trainer import resolve_device


def plain_forward(model: torch.nn.Module, data: IndexedDataset, device: torch.device, batch: int) -> None:
    """The reference: the same batches through the same model, eval mode, no grad, logits only."""
    model.eval()
    with torch.no_grad():
        for s in range(0, len(data), batch):
            x, _ = data.get(torch.arange(s, min(len(data), s + batch)))
            model(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load(n: int) -> IndexedDataset:
    try:
        from subsetlab.data import load_data

        train = load_data(DataConfig(name="fashion_mnist", val_fraction=0.0), 0).train
        source = "Fashion-MNIST"
    except Exception as exc:  # noqa: BLE001 - fall back to same-sized random data
        g = torch.Generator().manual_seed(0)
        train = IndexedDataset(torch.randn(60000, 1, 28, 28, generator=g), torch.randint(0, 10, (60000,), generator=g), 10)
        source = f"random 28x28 (Fashion-MNIST unavailable: {type(exc).__name__})"
    if n < len(train):
        train = train.subset(torch.arange(n))
    print(f"data: {source}, N={len(train)}")
    return train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="examples to embed")
    ap.add_argument("--model", default="cnn", help="model name (cnn, mlp, resnet20...)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    data = load(args.n)
    model = build_model(ModelConfig(name=args.model), data.input_shape, data.num_classes, 0).to(device)
    emb = GradientEmbedder(model, device, batch_size=args.batch)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, model {args.model}, batch {args.batch}")

    # warm-up (allocator, kernels), then alternate the three measurements
    plain_forward(model, data.subset(torch.arange(min(2048, len(data)))), device, args.batch)
    emb.embed(data, torch.arange(min(2048, len(data))))
    rows: dict[str, list[float]] = {"forward": [], "embed C": [], "embed C+C*D": []}
    for _ in range(args.repeats):
        rows["forward"].append(timed(lambda: plain_forward(model, data, device, args.batch)))
        rows["embed C"].append(timed(lambda: emb.embed(data, kind="bias")))
        rows["embed C+C*D"].append(timed(lambda: emb.embed(data, kind="bias_weight")))
    base = statistics.median(rows["forward"])
    print(f"\n{'pass':<14}{'median s':>10}{'min s':>10}{'ratio':>8}")
    for name, ts in rows.items():
        med = statistics.median(ts)
        print(f"{name:<14}{med:>10.3f}{min(ts):>10.3f}{med / base:>8.3f}")
    ratio = statistics.median(rows["embed C"]) / base
    print(f"\nembedder (C-dim) / forward = {ratio:.3f}  (target <= 1.25) -> {'OK' if ratio <= 1.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
