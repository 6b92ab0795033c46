"""Gradient descent with momentum for the toy-training tests (imported as ``from descent import descend``).

``torch.optim``'s first optimizer imports ``torch._dynamo`` (about 10 s on the 2-core machine); these few
lines keep a test file that trains a toy model fast when it runs on its own.
"""

import torch


def descend(params, loss_fn, steps: int, lr: float, momentum: float = 0.9) -> torch.Tensor:
    """``steps`` of heavy-ball descent on ``loss_fn()``; returns the last loss."""
    params = list(params)
    velocity = [torch.zeros_like(p) for p in params]
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, v, grad in zip(params, velocity, grads, strict=False):
                v.mul_(momentum).add_(grad)
                p.sub_(lr * v)
    return loss
