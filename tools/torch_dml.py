r"""The usual PyTorch DML loop, as a yardstick for ``tools.benchmark`` (needs ``torch``:
``pip install -e ".[bench]"``; never imported by the library).

What a user would write in PyTorch for two networks learning mutually: every member's
forward first, then for each member its cross-entropy plus the KL divergence from each
peer's detached prediction to its own (1/(K-1) of Eq. 10), ``backward`` and its own SGD
step (no refresh forward: the peers' targets are the predictions from before any
update, dml_tf's ``update="simultaneous"``). The networks are the CIFAR ResNets of He et
al. (2016) with option-A shortcuts, as ``dml_tf.nets.resnet``: same layers, 3x3 kernels,
He fan-out initialisation, batch norm with momentum 0.1 (Keras' 0.9) and epsilon 1e-5,
PyTorch's default NCHW layout. The optimizer is SGD with Nesterov momentum 0.9 and
weight decay as dml_tf's CIFAR recipe.

``python -m tools.torch_dml --serve`` is the worker ``tools.benchmark`` drives: it
reads one JSON command per line on stdin and answers one JSON line on stdout
(``{"op": "setup", ...}`` builds the cohort on a fixed random batch; ``{"op": "step"}``
runs one iteration and answers its seconds; ``{"op": "quit"}``).
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, in_filters, filters, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_filters, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.stride, self.extra = stride, filters - in_filters

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.extra:  # option A: zero channels, half before and half after
            s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(y + s)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. 2016, Sec. 4.2, option-A shortcuts."""

    def __init__(self, depth=32, num_classes=100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, eps=1e-5, momentum=0.1)
        blocks, in_filters = [], 16
        for stage, filters in enumerate((16, 32, 64)):
            for block in range(n):
                blocks.append(_BasicBlock(in_filters, filters, 2 if stage and not block else 1))
                in_filters = filters
        self.blocks = nn.Sequential(*blocks)
        self.logits = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.logits(x.mean(dim=(2, 3)))


class TorchDML:
    """K networks and their optimizers; :meth:`step` is one iteration of the usual loop."""

    def __init__(self, num_members=2, depth=32, num_classes=100, lr=0.1, weight_decay=5e-4,
                 seed=0):
        torch.manual_seed(seed)
        self.members = [CifarResNet(depth, num_classes) for _ in range(num_members)]
        self.optimizers = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                           weight_decay=weight_decay) for m in self.members]
        for member in self.members:
            member.train()

    def step(self, x, y):
        logits = [m(x) for m in self.members]
        peers = [F.softmax(lg, dim=1).detach() for lg in logits]
        losses = []
        for k, (lg, opt) in enumerate(zip(logits, self.optimizers)):
            log_p = F.log_softmax(lg, dim=1)
            mimicry = sum(F.kl_div(log_p, peers[j], reduction="batchmean")
                          for j in range(len(logits)) if j != k) / (len(logits) - 1)
            loss = F.cross_entropy(lg, y) + mimicry
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses


def serve():
    """The worker of ``tools.benchmark`` (its ``serve_steps`` loop)."""
    from tools.benchmark import serve_steps

    torch.set_num_threads(int(os.environ.get("DML_TF_BENCH_THREADS", os.cpu_count() or 1)))

    def setup(command):
        batch, classes = command["batch_size"], command["num_classes"]
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, classes, (batch,), generator=generator)
        cohort = TorchDML(command["num_members"], command["depth"], classes,
                          weight_decay=command["weight_decay"])
        return (lambda: cohort.step(x, y)), {"torch": torch.__version__,
                                              "threads": torch.get_num_threads()}

    serve_steps(setup)


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        sys.exit("Usage: python -m tools.torch_dml --serve  (the worker of tools.benchmark)")
    serve()
