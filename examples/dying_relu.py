"""Dying ReLUs on real data, and what DeadAwarePReLU and revive_dead_ do about it.

An MLP on scikit-learn's bundled digits is trained three times from the same
weights with a setting that kills ReLU units (biases initialised at -1.5 and a
high learning rate):
  relu     FusedLinearReLU layers (dead-neuron statistics on)
  prelu    nn.Linear + DeadAwarePReLU (a learnable negative slope)
  revive   FusedLinearReLU + torch_relu_ext.revive_dead_ every 2 epochs
It prints the dead % per layer as training goes, the final test accuracy of
each run, and writes a PNG plot of dead % per layer over training.

    python examples/dying_relu.py [--out dying_relu.png]
"""

import argparse
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torch_relu_ext
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

HIDDEN = 128
LAYERS = 3


def build(kind):
    layers, width = [], 64
    for _ in range(LAYERS):
        if kind == "prelu":
            layers += [nn.Linear(width, HIDDEN), DeadAwarePReLU(HIDDEN)]
        else:
            layers.append(FusedLinearReLU(width, HIDDEN))
        width = HIDDEN
    layers.append(nn.Linear(width, 10))
    model = nn.Sequential(*layers)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear) and m.out_features == HIDDEN:
                nn.init.kaiming_uniform_(m.weight, a=5**0.5)
                m.bias.fill_(-1.5)  # the bad initialisation
    return model


def run(kind, data, epochs, lr, batch):
    x_tr, y_tr, x_te, y_te = data
    model = build(kind)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    history, revived = [], 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        report = torch_relu_ext.dead_neuron_report(model)
        history.append([r.dead_pct for r in report])
        if kind == "revive" and epoch % 2 == 1 and epoch < epochs - 1:
            changes = torch_relu_ext.revive_dead_(model, opt)
            revived += sum(len(c["units"]) for c in changes.values())
    model.eval()
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    return history, acc, revived, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=os.path.join("build", "dying_relu.png"))
    args = ap.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    data = ((x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te)

    results = {}
    for kind in ("relu", "prelu", "revive"):
        history, acc, revived, report = run(kind, data, args.epochs, args.lr, args.batch)
        results[kind] = history
        print(f"== {kind}: test accuracy {acc:.4f}" + (f", {revived} units revived" if kind == "revive" else ""))
        print(report)
        print()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, (kind, history) in zip(axes, results.items()):
        h = torch.tensor(history)
        for layer in range(h.shape[1]):
            ax.plot(range(1, len(h) + 1), h[:, layer], marker="o", label=f"layer {layer + 1}")
        ax.set_title(kind)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dead units (%)")
    axes[0].legend()
    fig.suptitle("Dead units per layer (EMA active fraction <= 1%) on digits, bias init -1.5")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot written to {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
