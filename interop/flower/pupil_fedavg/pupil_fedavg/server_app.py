"""The ServerApp: Flower's own FedAvg over pupil SuperNodes (and Flower's, if any join)."""

import json
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def wait_for_nodes(grid: Grid, wanted: int, seconds: float) -> list[int]:
    """The ids of at least `wanted` connected nodes, waiting up to `seconds` for them."""
    deadline = time.time() + seconds
    while len(ids := list(grid.get_node_ids())) < wanted:
        if time.time() > deadline:
            raise RuntimeError(f"{len(ids)} of {wanted} nodes joined in {seconds} s")
        time.sleep(0.5)
    return sorted(ids)


def initial_arrays(grid: Grid, ids: list[int]) -> ArrayRecord:
    """The first arrays a node sends back to a `query`: the model its file describes."""
    queries = [Message(RecordDict(), dst_node_id=i, message_type=MessageType.QUERY) for i in ids]
    for reply in grid.send_and_receive(queries, timeout=120):
        if reply.has_content() and reply.content.array_records:
            return next(iter(reply.content.array_records.values()))
    raise RuntimeError("no node answered the query with its arrays")


def plain(metrics: dict) -> dict:
    """Round number to a JSON-ready dict of metrics."""
    return {str(r): dict(m) for r, m in metrics.items()}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    wanted = int(cfg["min-nodes"])
    ids = wait_for_nodes(grid, wanted, float(cfg["wait-seconds"]))
    started = time.time()
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=wanted,
        min_evaluate_nodes=wanted,
        min_available_nodes=wanted,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(grid, ids),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        train_config=ConfigRecord({"lr": float(cfg["lr"]), "local-epochs": int(cfg["local-epochs"])}),
    )
    out = {
        "nodes": ids,
        "seconds": time.time() - started,
        "train": plain(result.train_metrics_clientapp),
        "evaluate": plain(result.evaluate_metrics_clientapp),
        "arrays": {k: list(v.shape) for k, v in result.arrays.items()},
    }
    with open(str(cfg["results"]), "w") as f:
        json.dump(out, f, indent=1)
