"""Speculation tests run torch on one thread: on a shared 2-core machine a second thread
mostly spins waiting for the first (tiny models run 10-25× slower with two)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
