"""Recipe levers of the training (issue: the frontier found by the search): the weights'
exponential moving average, evaluated and logged instead of the weights, and a learning rate
of its own for batch-norm parameters. On the small generated data."""

from __future__ import annotations

import mlflow
import torch
from torch import nn

from fmnist_lab.module import Classifier
from fmnist_lab.train import train

SHORT = ["trainer.max_epochs=2", "data.train_fraction=0.2", "data.val_size=500",
         "runtime.threads=1", "evaluate=false", "model.filters=[8,16]"]  # fmt: skip


def test_the_moving_average_is_the_hand_computed_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    net(torch.zeros(2, 1, 28, 28))
    module = Classifier(net, lambda p: torch.optim.SGD(p, lr=0.1), 0.5, 0.25, ema_decay=0.9,
                        channels_last=False)  # fmt: skip
    optimizer = module.configure_optimizers()
    expected = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for step in range(3):
        x = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
        y = torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        module._step((x, y), "train").backward()
        optimizer.step()
        module.on_train_batch_end(None, None, step)
        now = net.state_dict()
        # The first update copies; the n-th after it keeps d = min(0.9, (1 + n) / (10 + n)).
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in expected.items():
            expected[k] = now[k].clone() if step == 0 or not v.is_floating_point() else (
                d * v + (1 - d) * now[k])  # fmt: skip
    averaged = module.ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(averaged[k].double(), v.double(), atol=1e-6), k
    assert not torch.equal(averaged["0.weight"], net.state_dict()["0.weight"])
    assert module.evaluated is module.ema.module


def test_training_with_the_average_validates_and_logs_the_average(make_cfg, tracking_uri,
                                                                   tmp_path):  # fmt: skip
    cfg = make_cfg(*SHORT, "ema.decay=0.99", f"tracking.uri={tracking_uri}")
    result = train(cfg, checkpoint=tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    raw = {k[len("net.") :]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    ema = {k[len("ema.module."):]: v for k, v in state["state_dict"].items()
           if k.startswith("ema.module.")}  # fmt: skip
    mlflow.set_tracking_uri(tracking_uri)
    logged = mlflow.pytorch.load_model(result.model_uri, map_location="cpu").net.state_dict()
    assert logged.keys() == ema.keys() == raw.keys()
    assert all(torch.equal(logged[k], ema[k]) for k in ema)
    assert not all(torch.equal(ema[k], raw[k]) for k in raw)
    assert result.params == sum(v.numel() for k, v in raw.items()
                                if "running" not in k and "num_batches" not in k)  # fmt: skip


def test_batch_norm_parameters_learn_at_their_own_multiple_of_the_rate(make_cfg, tracking_uri,
                                                                       tmp_path):  # fmt: skip
    cfg = make_cfg(*SHORT, "bn_lr_scale=4", f"tracking.uri={tracking_uri}", "log_model=false")
    train(cfg, checkpoint=tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    groups = state["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2
    assert groups[1]["max_lr"] == 4 * groups[0]["max_lr"] == 4 * cfg.optimizer.lr  # one-cycle
    assert abs(groups[1]["lr"] / groups[0]["lr"] - 4) < 1e-9  # scaled alike at every step
    sizes = sorted(len(state["optimizer_states"][0]["state"][i]["exp_avg"])
                   for i in groups[1]["params"])  # fmt: skip
    assert sizes and all(n in (8, 16) for n in sizes)  # batch-norm weights and biases
