"""The main job: the same MLP trained twice on scikit-learn's bundled digits,
eager (nn.Linear + nn.ReLU / nn.PReLU) versus torch-relu-ext's modules.

Prints the test accuracy of both, the training speed ratio, the activation
bytes each keeps for backward, and per-layer dead-neuron counts. Needs no
download (load_digits ships with scikit-learn).

    bash dev.sh demo            # or: python examples/train_digits.py --epochs 40
"""

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torch_relu_ext
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU
from torch_relu_ext.utils import saved_tensor_bytes


# torchvision.ops.MLP-style blocks: Linear -> activation -> Dropout. After a
# ReLU, eager keeps the ReLU output for backward while the next layer keeps
# the dropout output: the fused layer keeps a 1-bit mask instead of the first.
def eager_model(hidden, p):
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(hidden, hidden),
        nn.PReLU(hidden),
        nn.Dropout(p),
        nn.Linear(hidden, 10),
    )


def fused_model(hidden, p):
    return nn.Sequential(
        FusedLinearReLU(64, hidden),
        nn.Dropout(p),
        FusedLinearReLU(hidden, hidden),
        nn.Dropout(p),
        nn.Linear(hidden, hidden),
        DeadAwarePReLU(hidden),
        nn.Dropout(p),
        nn.Linear(hidden, 10),
    )


def copy_weights(eager, fused):
    """Same initial weights in both models (their state_dict keys match per layer)."""

    def with_params(m):
        return [layer for layer in m if any(True for _ in layer.parameters())]

    for e, f in zip(with_params(eager), with_params(fused)):
        f.load_state_dict(e.state_dict())


def activation_bytes(model, x):
    """Bytes autograd keeps for backward, parameters excluded."""
    return saved_tensor_bytes(lambda: model(x).sum(), model.parameters())


def compressed_activation_bytes(model, x):
    """activation_bytes under compress_relu_activations(): what it stores for
    the ReLU outputs it compressed (bits + non-zero values) plus the rest."""
    ctx = torch_relu_ext.compress_relu_activations()

    def forward():
        with ctx:
            return model(x).sum()

    return saved_tensor_bytes(forward, model.parameters()) + ctx.stats["packed_bytes"]


def without_dropout(model, fn):
    """fn() with every Dropout of model at p=0 (it then passes its input on)."""
    drops = [(m, m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    for m, _ in drops:
        m.p = 0.0
    try:
        return fn()
    finally:
        for m, p in drops:
            m.p = p


def train(model, x, y, epochs, batch, lr, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # same dropout masks in both runs
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def dead_units(model, x):
    """Per activation layer: units whose pre-activation is never > 0 on x.

    DeadAwarePReLU layers report it from dead_prelu's own active counts
    (computed in the same pass as the activation); the others are counted
    from the layer's output.
    """
    model.eval()
    rows = []
    h = x
    for i, layer in enumerate(model):
        if isinstance(layer, DeadAwarePReLU):
            h, count = torch_relu_ext.functional.dead_prelu(h, layer.weight)
            rows.append((f"{i}:{type(layer).__name__}", h.shape[1], int((count == 0).sum())))
            continue
        h = layer(h)
        if isinstance(layer, (nn.ReLU, FusedLinearReLU)):
            rows.append((f"{i}:{type(layer).__name__}", h.shape[1], int(((h > 0).sum(0) == 0).sum())))
        elif isinstance(layer, nn.PReLU):
            # Eager needs a separate pass for the statistic: the input sign.
            rows.append((f"{i}:{type(layer).__name__}", h.shape[1], -1))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=args.seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std

    torch.manual_seed(args.seed)
    eager = eager_model(args.hidden, args.dropout)
    fused = fused_model(args.hidden, args.dropout)
    copy_weights(eager, fused)

    print(
        f"torch {torch.__version__}, torch-relu-ext {torch_relu_ext.__version__}, "
        f"{torch.get_num_threads()} threads; digits: {len(x_tr)} train / {len(x_te)} test, "
        f"MLP 64-{args.hidden}-{args.hidden}-{args.hidden}-10 (dropout {args.dropout}), "
        f"{args.epochs} epochs, batch {args.batch}"
    )
    # Warm up both once so one-time costs stay out of the timing.
    for m in (eager, fused):
        m(x_tr[: args.batch]).sum().backward()
        m.zero_grad(set_to_none=True)

    t_eager = train(eager, x_tr, y_tr, args.epochs, args.batch, args.lr, args.seed)
    t_fused = train(fused, x_tr, y_tr, args.epochs, args.batch, args.lr, args.seed)
    acc_eager, acc_fused = accuracy(eager, x_te, y_te), accuracy(fused, x_te, y_te)

    xb = x_tr[: args.batch]
    eager.train()
    fused.train()
    torch.manual_seed(args.seed)
    mem_eager = activation_bytes(eager, xb)
    torch.manual_seed(args.seed)
    mem_fused = activation_bytes(fused, xb)
    torch.manual_seed(args.seed)
    mem_comp = compressed_activation_bytes(fused, xb)
    # Without dropout the next Linear keeps the ReLU output itself: what
    # compress_relu_activations() is for (measured on the trained weights).
    nodrop = [
        without_dropout(eager, lambda: activation_bytes(eager, xb)),
        without_dropout(fused, lambda: activation_bytes(fused, xb)),
        without_dropout(fused, lambda: compressed_activation_bytes(fused, xb)),
    ]

    print()
    print(f"{'':28}{'eager':>12}{'torch-relu-ext':>16}")
    print(f"{'test accuracy':28}{acc_eager:>12.4f}{acc_fused:>16.4f}")
    print(f"{'training time (s)':28}{t_eager:>12.2f}{t_fused:>16.2f}")
    print(f"{'speed ratio (eager/ours)':28}{'':>12}{t_eager / t_fused:>15.2f}x")
    print(f"{'activation bytes / batch':28}{mem_eager:>12,}{mem_fused:>16,}")
    print(f"{'activation memory ratio':28}{'':>12}{mem_eager / mem_fused:>15.2f}x")
    print()
    print("activation bytes kept for backward, one batch:")
    print(f"  {'':26}{'eager':>12}{'ours':>12}{'ours, compressed':>18}")
    print(f"  {f'dropout {args.dropout} (as trained)':26}{mem_eager:>12,}{mem_fused:>12,}{mem_comp:>18,}")
    print(f"  {'no dropout':26}{nodrop[0]:>12,}{nodrop[1]:>12,}{nodrop[2]:>18,}")
    print(
        "  (compressed = under torch_relu_ext.compress_relu_activations(), which stores ReLU outputs that\n"
        "   a later layer keeps as 1 bit per element + the non-zeros; after a dropout the next layer\n"
        "   keeps the dropout output instead, so only the no-dropout row can shrink)"
    )
    print()
    print("dead units (never active on the training set), per activation layer:")
    for (name_e, units, dead_e), (name_f, _, dead_f) in zip(dead_units(eager, x_tr), dead_units(fused, x_tr)):
        shown_e = "n/a (needs a separate pass)" if dead_e < 0 else f"{dead_e}/{units}"
        print(f"  eager {name_e:<12} {shown_e:<28} ours {name_f:<20} {dead_f}/{units}")


if __name__ == "__main__":
    main()
