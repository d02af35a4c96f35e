"""Continued training (fmnist_lab.continuation): a warmup-stable-decay run saved at the end
of its stable phase and trained on to a longer length takes exactly the steps of a run of that
length trained straight through, on the small generated data, in fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from fmnist_lab.continuation import StableCheckpoint, stable_end
from fmnist_lab.train import train

# Dropout, augmentation (crop + flip: the global generator) and the data order (the batches'
# own generator) all draw random numbers: each must continue where it stopped.
# The recipe levers too: the weights' moving average (a submodule, in the checkpoint) and the
# batch-norm parameters' own rate (a second optimizer group).
RUNG = ["scheduler=wsd", "scheduler.warmup_epochs=0.5", "model.dropout=0.2",
        "augmentation=crop_flip", "data.train_fraction=0.1", "data.val_size=500",
        "log_model=false", "test=false", "runtime.threads=1", "ema.decay=0.99",
        "bn_lr_scale=2"]  # fmt: skip


def rung(make_cfg, epochs: int, decay: int, uri: str, *more: str):
    return make_cfg(*RUNG, f"trainer.max_epochs={epochs}", f"scheduler.decay_epochs={decay}",
                    f"tracking.uri={uri}", *more)  # fmt: skip


def weights(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {
        **state["state_dict"],
        **{f"optimizer.{k}": v for k, v in flat(state["optimizer_states"][0]).items()},
    }


def flat(tree, prefix="") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}{i}.").items()}
    return {}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_rung_continued_equals_the_longer_run_straight_through(make_cfg, tracking_uri,
                                                                 tmp_path, precision):  # fmt: skip
    # bf16-mixed as the CPU sweep files train: autocast is as deterministic on the CPU.
    cfg = {n: rung(make_cfg, n, 1, tracking_uri, f"trainer.precision={precision}")
           for n in (2, 4)}  # fmt: skip
    # Straight through: 4 epochs, stable to the end of epoch 3, saved there.
    straight = train(cfg[4], callbacks=[StableCheckpoint(3, tmp_path / "s3.pt")])
    # Rung of 2 epochs (stable to 1, saved, decayed branch validated), then on to 4 from e1.
    short = train(cfg[2], callbacks=[StableCheckpoint(1, tmp_path / "e1.pt", quiet=True)])
    longer = train(cfg[4], callbacks=[StableCheckpoint(3, tmp_path / "c3.pt")],
                   resume_from=str(tmp_path / "e1.pt"), run_id=short.run_id)  # fmt: skip

    a, b = weights(tmp_path / "s3.pt"), weights(tmp_path / "c3.pt")
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit-identical: {different[:5]}"
    assert longer.metrics["val_acc"] == straight.metrics["val_acc"]
    assert longer.metrics["train_loss"] == straight.metrics["train_loss"]

    # One run holds the rung and its continuation: the per-epoch curve has epochs 0..3 once
    # each (the short rung's decayed epoch 1 was kept out of it), the same as straight through.
    client = MlflowClient(tracking_uri)
    history = client.get_metric_history(short.run_id, "val_acc")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    same = client.get_metric_history(straight.run_id, "val_acc")
    assert sorted((m.step, m.value) for m in history) == sorted((m.step, m.value) for m in same)
    assert client.get_run(short.run_id).info.status == "FINISHED"
    assert client.get_run(short.run_id).data.params["trainer.max_epochs"] == "2"  # as started


ENDS = [(1, 0.2, 0), (3, 0.2, 2), (10, 0.2, 8), (30, 0.2, 24), (30, 0.1, 27), (5, 0.5, 2)]


@pytest.mark.parametrize(("epochs", "decay", "end"), ENDS)
def test_the_stable_phase_ends_before_the_decay_of_at_least_one_epoch(epochs, decay, end):
    assert stable_end(epochs, decay) == end
