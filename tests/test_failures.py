"""A failure reads as one line whatever process raised it: the main process, a DataLoader worker
(PyTorch re-raises it with the whole traceback in the message) or Ray's wrappers around them."""

import pytest
from torch.utils.data import DataLoader, IterableDataset

from dplbench.data.errors import CorruptShardError
from dplbench.run.failures import JobFailed, one_line

LINE = "CorruptShardError: corrupt shard /s/test/0.tar: sample 'test_0000012': OSError: truncated"


class _Corrupt(IterableDataset):
    def __iter__(self):
        raise CorruptShardError("/s/test/0.tar", "test_0000012", "OSError: truncated")
        yield  # an iterator


def _raised(workers: int) -> BaseException:
    with pytest.raises(Exception) as info:
        list(DataLoader(_Corrupt(), batch_size=None, num_workers=workers))
    return info.value


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_shard_is_one_line_from_the_main_process_or_a_loader_worker(workers):
    err = _raised(workers)
    if workers:  # what PyTorch hands on: a RuntimeError holding the worker's traceback
        assert type(err) is RuntimeError and "Original Traceback" in str(err)
    assert one_line(err) == LINE


def test_wrapped_errors_unwrap_to_the_same_line():
    class Wrapper(Exception):  # Ray's RayTaskError keeps the cause in `.cause`
        def __init__(self, cause):
            super().__init__("ray wrapper: long text\nTraceback ...")
            self.cause = cause

    assert one_line(Wrapper(_raised(1))) == LINE
    failed = JobFailed(LINE, "R/logs/job-run.log")
    assert one_line(Wrapper(failed)) == f"{LINE} (log: R/logs/job-run.log)"
