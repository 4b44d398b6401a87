"""The sampler sees only logits: greedy, top-k, top-p, temperature and seeds."""

import torch

from pbd_core.sampler import apply_top_k, apply_top_p, make_sampler


def test_greedy_takes_the_argmax_of_every_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert make_sampler(0.0)(logits).tolist() == [1, 0]


def test_top_k_keeps_the_k_largest():
    out = apply_top_k(torch.tensor([[1.0, 4.0, 3.0, 2.0]]), 2)
    assert torch.isinf(out).tolist() == [[True, False, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p_and_never_nothing():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(apply_top_p(logits, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(apply_top_p(logits, 0.01)).tolist() == [[False, True, True, True]]


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits = torch.zeros(4, 50)
    first = make_sampler(1.0, generator=torch.Generator().manual_seed(7))
    second = make_sampler(1.0, generator=torch.Generator().manual_seed(7))
    assert [first(logits).tolist() for _ in range(5)] == [second(logits).tolist() for _ in range(5)]


def test_sampling_only_picks_tokens_that_survive_filtering():
    logits = torch.tensor([[0.0, 0.1, 0.2, 10.0, 9.0]])
    sample = make_sampler(1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert {sample(logits).item() for _ in range(50)} <= {3, 4}
