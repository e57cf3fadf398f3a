"""The NumPy ClientApp for Flower's own SuperNodes: the same model (an MLP whose layers are
the arrays `mlp.<i>.weight` `[out, in]` and `mlp.<i>.bias`, ReLU between), the same inputs
(IDX pixels / 255) and the same local update (plain SGD) as `pupil flower`, so their
replies average together."""

import functools
import gzip
import os

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as an array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


@functools.lru_cache(maxsize=4)
def read_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images and labels: `{split}-images.idx` and `{split}-labels.idx`, or the
    `mnist_{split}.csv` (label, then pixels) that pupil's `models/fetch mnist` caches."""
    csv = os.path.join(folder, f"mnist_{split}.csv")
    if os.path.exists(csv):
        rows = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.uint8)
        return rows[:, 1:], rows[:, 0]
    x = read_idx(os.path.join(folder, f"{split}-images.idx"))
    return x.reshape(len(x), -1), read_idx(os.path.join(folder, f"{split}-labels.idx"))


def local_data(context: Context, split: str, most: int) -> tuple[np.ndarray, np.ndarray]:
    """This node's shard of the data set in the node config (`data`, `partition-id`,
    `num-partitions`): examples i, i+n, ... as pupil's `--shard i/n` takes them."""
    cfg = context.node_config
    i, n = int(cfg["partition-id"]), int(cfg["num-partitions"])
    x, y = read_split(str(cfg["data"]), split)
    return x[i::n][:most].astype(np.float32) / 255.0, y[i::n][:most].astype(np.int64)


def layers(arrays: ArrayRecord) -> list[list[np.ndarray]]:
    """The MLP's [weight, bias] pairs in layer order."""
    count = sum(1 for k in arrays if k.endswith(".weight"))
    return [[arrays[f"mlp.{i}.weight"].numpy().copy(), arrays[f"mlp.{i}.bias"].numpy().copy()] for i in range(count)]


def forward(params, x):
    """Each layer's input and the logits."""
    inputs = []
    for j, (w, b) in enumerate(params):
        inputs.append(x)
        x = x @ w.T + b
        if j < len(params) - 1:
            x = np.maximum(x, 0.0)
    return inputs, x


def loss_and_grads(params, x, y):
    inputs, z = forward(params, x)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    dz = p
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    grads = [None] * len(params)
    for j in reversed(range(len(params))):
        w, _ = params[j]
        grads[j] = [dz.T @ inputs[j], dz.sum(axis=0)]
        if j > 0:
            dz = (dz @ w) * (inputs[j] > 0)
    return loss, grads


def to_record(params) -> ArrayRecord:
    record = {}
    for i, (w, b) in enumerate(params):
        record[f"mlp.{i}.weight"] = w.astype(np.float32)
        record[f"mlp.{i}.bias"] = b.astype(np.float32)
    return ArrayRecord(record)


@app.train()
def train(msg: Message, context: Context) -> Message:
    params = layers(msg.content["arrays"])
    cfg = msg.content["config"]
    lr, epochs = float(cfg.get("lr", 0.05)), int(cfg.get("local-epochs", 1))
    x, y = local_data(context, "train", int(context.node_config.get("examples", 2000)))
    rng = np.random.default_rng(int(context.node_config["partition-id"]))
    loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), 32):
            idx = order[start : start + 32]
            loss, grads = loss_and_grads(params, x[idx], y[idx])
            for (w, b), (gw, gb) in zip(params, grads):
                w -= lr * gw
                b -= lr * gb
    metrics = MetricRecord({"num-examples": len(y), "train_loss": loss})
    return Message(RecordDict({"arrays": to_record(params), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    params = layers(msg.content["arrays"])
    x, y = local_data(context, "test", int(context.node_config.get("eval-examples", 1000)))
    _, z = forward(params, x)
    z = z - z.max(axis=1, keepdims=True)
    loss = float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]).mean())
    acc = float((z.argmax(axis=1) == y).mean())
    metrics = MetricRecord({"num-examples": len(y), "eval_loss": loss, "eval_acc": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)
