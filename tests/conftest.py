"""Shared test settings: one torch thread (2-core CI machines, several processes at once)."""

import torch

torch.set_num_threads(1)
