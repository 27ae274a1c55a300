"""PyTorch CPU training-throughput baseline for the McMahan et al. (2017) MNIST models.

Trains the "2NN" MLP and the "CNN" from "Communication-Efficient Learning of Deep
Networks from Decentralized Data" with plain SGD and cross-entropy loss, for one
epoch over the first N MNIST training images, and reports examples per second for
each (model, batch size, thread count). Pixels are scaled to [0, 1]; nothing else.

Usage:
    python pytorch_baseline.py [--data-dir DIR] [--examples 6000]
        [--batch-sizes 10,32,50] [--threads 1,2] [--lr 0.05] [--json out.json]
"""
import argparse
import gzip
import json
import os
import platform
import struct
import time

import numpy as np
import torch
from torch import nn


def read_idx(data_dir, stem):
    """Read an IDX file named `stem` (either '-idx' or '.idx' spelling, gzipped or plain)."""
    names = [stem, stem.replace("-idx", ".idx")]
    for name in names:
        for path in (os.path.join(data_dir, name), os.path.join(data_dir, name + ".gz")):
            if os.path.exists(path):
                opener = gzip.open if path.endswith(".gz") else open
                with opener(path, "rb") as f:
                    raw = f.read()
                zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
                assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte IDX file"
                shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
                return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    raise FileNotFoundError(f"no {stem}[.gz] (or {names[1]}[.gz]) in {data_dir}")


def make_model(name):
    if name == "2NN":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 200), nn.ReLU(),
            nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10))
    assert sum(p.numel() for p in model.parameters()) == 1_663_370
    return model


def train_epoch(model, opt, x, y, batch, limit=None):
    """One shuffled SGD epoch (or its first `limit` batches); returns (seconds, examples, mean loss)."""
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x))
    starts = list(range(0, len(x), batch))[:limit]
    total, seen = torch.zeros(()), 0
    t0 = time.perf_counter()
    for s in starts:
        idx = order[s : s + batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return time.perf_counter() - t0, seen, total.item() / seen


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--examples", type=int, default=6000)
    p.add_argument("--batch-sizes", default="10,32,50")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--models", default="2NN,CNN")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--warmup-batches", type=int, default=20)
    p.add_argument("--json", help="also write results to this JSON file")
    a = p.parse_args()

    images = read_idx(a.data_dir, "train-images-idx3-ubyte")[: a.examples]
    labels = read_idx(a.data_dir, "train-labels-idx1-ubyte")[: a.examples]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # N,1,28,28
    y = torch.from_numpy(labels.astype(np.int64))

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {len(x)} examples, SGD lr={a.lr}")
    print(f"{'model':<5} {'batch':>5} {'threads':>7} {'seconds':>8} {'examples/s':>11} {'loss':>7}")
    results = []
    for model_name in a.models.split(","):
        for batch in map(int, a.batch_sizes.split(",")):
            for threads in map(int, a.threads.split(",")):
                torch.set_num_threads(threads)
                torch.manual_seed(0)
                model = make_model(model_name)
                opt = torch.optim.SGD(model.parameters(), lr=a.lr)
                train_epoch(model, opt, x, y, batch, limit=a.warmup_batches)  # warm-up
                secs, seen, loss = train_epoch(model, opt, x, y, batch)
                r = dict(model=model_name, batch=batch, threads=threads, seconds=secs,
                         examples_per_s=seen / secs, mean_loss=loss)
                results.append(r)
                print(f"{model_name:<5} {batch:>5} {threads:>7} {secs:>8.2f} "
                      f"{r['examples_per_s']:>11.0f} {loss:>7.3f}", flush=True)
    if a.json:
        meta = dict(torch=torch.__version__, cpus=os.cpu_count(), examples=len(x), lr=a.lr)
        with open(a.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)


if __name__ == "__main__":
    main()
