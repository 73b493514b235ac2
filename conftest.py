"""Test-wide settings: one torch thread per process. The tests use tiny tensors, for which a
second thread only adds synchronisation, and on a loaded machine it slows them down many times."""

import torch

torch.set_num_threads(1)
