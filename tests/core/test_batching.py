"""Continuous batching: concurrent answers share forward passes and get exactly what they get alone.

One decoder, eight answers of different kinds (caller branches with either merge, a
model-planned block, plain decoding, a stop string, a long prompt fed in chunks, and one
abandoned midway), sent first one at a time and then all at once from threads or from
an event loop: greedy fp32 output is token-identical, the batch takes far fewer forward
passes than the answers alone, and afterwards the cache is empty again.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from tiny_models import byte_tokenizer, tiny_model

from pbd_core import ParallelBranchDecoder
from pbd_core.executors.forest import AdmissionTimeout
from pbd_core.types import FinalEvent

STOPS = [chr(c) for c in range(33, 127, 5)]


def kinds(long_prompt_repeats: int = 40) -> list[tuple[str, str, dict]]:
    """(name, prompt, options) of seven answers that finish; the eighth is abandoned (see `abandon`)."""
    return [
        ("three caller branches", "Question: list three things", dict(branches=["alpha", "b", "gamma"], max_branch_tokens=16,
                                                                      max_new_tokens=120, stop=STOPS)),
        ("eight branches, reuse", "Question: eight items", dict(branches=[f"item {i}" for i in range(8)], max_branch_tokens=12,
                                                                 max_new_tokens=200, merge="reuse", stop=STOPS)),
        ("model-planned", "Plan this", dict(force_plan=True, max_branches=4, max_branch_tokens=10, max_new_tokens=90)),
        ("plain", "Just answer", dict(parallel=False, max_new_tokens=40)),
        ("stop string", "Write until the stop", dict(max_new_tokens=60, stop=["e", "a"])),
        ("long prompt", "context " * long_prompt_repeats + "question?", dict(branches=["x", "y"], max_branch_tokens=10,
                                                                             max_new_tokens=60, stop=STOPS)),
        ("sequential branches", "Question: in order", dict(branches=["one", "two"], parallel=False, max_branch_tokens=12,
                                                           max_new_tokens=80, stop=STOPS)),
    ]


def fingerprint(result) -> tuple:
    return (result.text, result.finish_reason, tuple(result.token_ids),
            tuple((b.title, tuple(b.token_ids), b.finish_reason) for b in result.branches))


def abandon(decoder, after: int = 5) -> None:
    """Start a branch answer and stop iterating after ``after`` events (a client that went away)."""
    stream = decoder.stream("Question: abandoned", branches=["p", "q", "r"], max_branch_tokens=30, max_new_tokens=200)
    for i, _ in enumerate(stream):
        if i + 1 >= after:
            break
    stream.close()


def run_concurrently(decoder, jobs) -> list:
    results: list = [None] * len(jobs)
    errors: list = []
    barrier = threading.Barrier(len(jobs) + 1)

    def work(i, prompt, options):
        barrier.wait()
        try:
            results[i] = decoder.generate(prompt, **options)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i, p, o)) for i, (_, p, o) in enumerate(jobs)]
    threads.append(threading.Thread(target=lambda: (barrier.wait(), abandon(decoder))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_answers_decoded_together_equal_answers_decoded_alone(arch, tokenizer):
    decoder = ParallelBranchDecoder(tiny_model(arch), tokenizer)
    jobs = kinds()
    alone = [decoder.generate(prompt, **options) for _, prompt, options in jobs]
    steps_alone = decoder.scheduler.steps
    together = run_concurrently(decoder, jobs)
    steps_together = decoder.scheduler.steps - steps_alone

    for (name, _, _), a, b in zip(jobs, alone, together):
        assert fingerprint(a) == fingerprint(b), name
    assert any(len(r.branches) >= 2 for r in alone), "the jobs must exercise parallel blocks"
    # Together they share forward passes: far fewer steps than the answers needed one by one.
    assert steps_together < 0.6 * steps_alone, (steps_together, steps_alone)
    # Everything is freed: no answer left in the batch, no slot left in the cache.
    stats = decoder.scheduler.stats()
    assert stats["active"] == 0 and stats["cache_slots"] == 0, stats


def test_default_model_answers_together_equal_answers_alone(default_decoder_fp32):
    decoder = default_decoder_fp32
    messages = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    jobs = [
        ("caller branches", messages("Give one tip each."), dict(branches=["Hiking", "Swimming", "Cycling"],
                                                                 max_branch_tokens=12, max_new_tokens=60)),
        ("plain", messages("What is 2 + 2?"), dict(parallel=False, max_new_tokens=16)),
        ("stop", messages("Count from one to ten in words."), dict(max_new_tokens=24, stop=["five"])),
        ("reuse", messages("Name a fruit and a vegetable."), dict(branches=["Fruit", "Vegetable"], merge="reuse",
                                                                  max_branch_tokens=10, max_new_tokens=40)),
    ]
    alone = [decoder.generate(p, temperature=0.0, **o) for _, p, o in jobs]
    together = run_concurrently(decoder, [(n, p, {**o, "temperature": 0.0}) for n, p, o in jobs])
    for (name, _, _), a, b in zip(jobs, alone, together):
        assert fingerprint(a) == fingerprint(b), name


def test_async_answers_batch_and_equal_answers_alone(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer)
    jobs = kinds()[:4]
    alone = [decoder.generate(prompt, **options) for _, prompt, options in jobs]
    before = decoder.scheduler.steps

    async def main():
        return await asyncio.gather(*(decoder.agenerate(prompt, **options) for _, prompt, options in jobs))

    together = asyncio.run(main())
    assert [fingerprint(r) for r in together] == [fingerprint(r) for r in alone]
    assert decoder.scheduler.steps - before < 0.7 * before


def test_an_abandoned_async_stream_leaves_the_batch(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer)

    async def main():
        seen = 0
        stream = decoder.astream("Question: go away", branches=["a", "b"], max_branch_tokens=40, max_new_tokens=200)
        async for _ in stream:
            seen += 1
            if seen == 4:
                break
        await stream.aclose()
        return seen

    assert asyncio.run(main()) == 4
    assert decoder.scheduler.stats()["active"] == 0
    # The next answer starts from an empty cache (the abandoned one's slots are gone).
    decoder.generate("Next", max_new_tokens=3)
    assert decoder.scheduler.stats()["cache_slots"] == 0


def test_rollbacks_of_one_answer_do_not_disturb_another(tokenizer):
    """A recompute merge and a plan list crop their own slots while another answer holds slots after them."""
    decoder = ParallelBranchDecoder(tiny_model("qwen2", seed=3), tokenizer)
    jobs = [("recompute", "Question: crop me", dict(branches=["a", "bb", "ccc"], max_branch_tokens=20,
                                                     max_new_tokens=150, stop=STOPS)),
            ("planned", "Plan please", dict(force_plan=True, max_branches=3, max_branch_tokens=8, max_new_tokens=80)),
            ("plain", "Long plain answer", dict(parallel=False, max_new_tokens=120))]
    alone = [decoder.generate(p, **o) for _, p, o in jobs]
    together = run_concurrently(decoder, jobs)
    assert [fingerprint(r) for r in together] == [fingerprint(r) for r in alone]


def test_admission_limits_streams_and_waits_in_order(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer, max_streams=2)
    peak = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak.append(decoder.scheduler.stats()["active"])
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        jobs = [(f"plain {i}", f"Prompt {i}", dict(parallel=False, max_new_tokens=20)) for i in range(5)]
        alone = [decoder.generate(p, **o) for _, p, o in jobs]
        together = run_concurrently(decoder, jobs)
    finally:
        stop.set()
        watcher.join()
    assert [fingerprint(r) for r in together] == [fingerprint(r) for r in alone]
    assert max(peak) <= 2


def test_an_answer_that_waits_too_long_gets_a_clear_error(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer, max_streams=1, admission_timeout=0.2)
    first = decoder.stream("Holding the only place", parallel=False, max_new_tokens=50)
    next(first)  # admitted: it holds the only stream
    with pytest.raises(AdmissionTimeout, match="waited"):
        decoder.generate("Second", max_new_tokens=5)
    first.close()
    assert decoder.generate("Third", max_new_tokens=5).text is not None  # room again


def test_an_answer_larger_than_the_kv_limit_is_refused_at_once(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer, max_kv_tokens=100)
    with pytest.raises(ValueError, match="max_kv_tokens"):
        decoder.generate("Too big", max_new_tokens=200)


def test_without_batching_each_answer_has_its_own_cache(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer, batching=False)
    assert decoder.scheduler is None and not decoder.executor.concurrent
    batched = ParallelBranchDecoder(tiny_model("llama"), tokenizer)
    options = dict(branches=["a", "b"], max_branch_tokens=10, max_new_tokens=60, stop=STOPS)
    assert fingerprint(decoder.generate("Same", **options)) == fingerprint(batched.generate("Same", **options))


def test_streamed_events_of_concurrent_answers_stay_with_their_answer(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("gemma3"), tokenizer)
    jobs = kinds()[:3]
    expected = [decoder.generate(p, **o) for _, p, o in jobs]
    finals: list = [None] * len(jobs)

    def consume(i, prompt, options):
        for event in decoder.stream(prompt, **options):
            if isinstance(event, FinalEvent):
                finals[i] = event.result

    threads = [threading.Thread(target=consume, args=(i, p, o)) for i, (_, p, o) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [fingerprint(r) for r in finals] == [fingerprint(r) for r in expected]
