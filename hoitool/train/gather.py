"""The global batch of a data-parallel step, for in-batch losses (CL-HOI's InfoNCE and text->video contrast).

Under DDP each rank holds a strided share of each global batch (:class:`hoitool.train.data.EpochBatchSampler`),
so a loss that contrasts a sample with the others of its batch must see every rank's samples:
:class:`BatchGather` all-gathers a per-sample tensor **with gradient**
(``torch.distributed.nn.functional.all_gather``: its backward sums every rank's gradient into the
owner's rows), padding the ranks' shares to one size, and says which rows are this rank's. Each rank
then keeps the loss of its own samples, so the loop's per-sample weights and DDP's gradient average
give the global batch mean, as one process would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class BatchGather:
    """``gather(x (B, ...)) -> (N, ...)`` in rank order; ``rows`` (B,) this rank's rows of the result."""

    def __init__(self, local_size: int, device: torch.device):
        size = torch.tensor([local_size], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size)
        self.sizes = [int(value.item()) for value in sizes]
        self.most = max(self.sizes)
        start = sum(self.sizes[: dist.get_rank()])
        self.rows = torch.arange(start, start + local_size, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_gather

        flag = x.dtype == torch.bool  # collectives move numbers: a mask travels as uint8
        value = x.to(torch.uint8) if flag else x
        if len(value) < self.most:
            value = torch.cat([value, value.new_zeros(self.most - len(value), *value.shape[1:])])
        if value.requires_grad:
            parts = list(all_gather(value.contiguous()))
        else:
            parts = [torch.empty_like(value) for _ in self.sizes]
            dist.all_gather(parts, value.contiguous())
        out = torch.cat([part[:size] for part, size in zip(parts, self.sizes, strict=True)])
        return out.bool() if flag else out
