"""Suite-wide settings.

One torch thread for the whole suite: the tests use small tensors, for which intra-op
threads only add overhead, and on a 2-core machine shared with other processes two
threads made small FFTs and convolutions 10-40x slower (measured while developing).
"""

import torch

torch.set_num_threads(1)
