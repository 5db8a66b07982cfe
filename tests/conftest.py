"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for modules of tiny networks and solves: as fast on an idle machine, and on a
    shared one immune to thread hand-offs (measured 10× slowdowns of 16-D solves), with results
    independent of the core count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
