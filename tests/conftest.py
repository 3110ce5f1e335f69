"""Suite-wide settings: one torch thread (small tensors; predictable on 2-core CI)."""

import torch

torch.set_num_threads(1)
