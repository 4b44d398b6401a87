import pytest

from pbd_core import ParallelBranchDecoder


@pytest.fixture(scope="session")
def default_decoder_fp32() -> ParallelBranchDecoder:
    """The real default model (SmolLM2-135M-Instruct) in fp32, where greedy decoding is exact."""
    return ParallelBranchDecoder.from_pretrained("default", dtype="float32", device="cpu")
