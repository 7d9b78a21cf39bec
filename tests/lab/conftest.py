import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The toy models take tiny steps: extra intra-op threads only spin (their run() does the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
