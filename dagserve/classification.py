"""Triton's classification extension: an output returned as its top-k classes.

A client asks for it per requested output, with the parameter ``classification: k`` (HTTP
``outputs[i].parameters.classification``; gRPC ``InferRequestedOutputTensor.parameters
["classification"].int64_param``; ``tritonclient``'s ``InferRequestedOutput(name,
class_count=k)`` sets both). Instead of the scores, the output then comes back as a BYTES
tensor of the ``k`` highest elements, each ``"value:index"``, or ``"value:index:label"`` when
the model config gives the output a ``label_filename`` with a label for that index.

The rules follow Triton's frontends (``src/classification.cc``, the result built in
``http_server.cc`` and ``grpc/infer_handler.h``):

* a batching model (``max_batch_size`` > 0) is classified per batch item: the result has shape
  ``[batch, min(k, n)]``, ``n`` being the element count of one item (every dimension after the
  batch one, flattened, so an index is a flat index into the item); a model that does not batch
  is classified as a whole, shape ``[min(k, n)]``;
* classes come in descending order of value; ``k`` larger than ``n`` returns all ``n``;
* the value is printed as C++ ``std::to_string`` prints it: ``%f`` (six decimals) for FP32 and
  FP64, a plain integer for the integer types;
* only UINT8..UINT64, INT8..INT64, FP32 and FP64 outputs are classifiable (BOOL, FP16, BF16
  and BYTES are not), and an item has at most 1,000,000 elements.

Where Triton leaves it open, dagserve decides: equal values keep index order (Triton's sort
is unstable), and NaN ranks below every number. Triton checks the datatype only after running
the model; dagserve checks it, and ``k``, before the request is queued.

The engine calls :func:`check_output_parameters` while validating a request and
:func:`apply` when it builds the response, so both frontends, the in-process API and
pipelines behave the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .types import DataType, InferRequest, to_host

__all__ = [
    "CLASSIFIABLE",
    "MAX_CLASSIFICATION_ELEMENTS",
    "OUTPUT_PARAMETERS",
    "apply",
    "check_output_parameters",
    "classify",
    "requested_counts",
]

PARAMETER = "classification"

CLASSIFIABLE = frozenset({
    DataType.UINT8, DataType.UINT16, DataType.UINT32, DataType.UINT64,
    DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64,
    DataType.FP32, DataType.FP64,
})
"""The output datatypes a classification can be asked of (Triton's list)."""

MAX_CLASSIFICATION_ELEMENTS = 1_000_000
"""Most elements one batch item of a classified output may have (Triton's limit)."""

OUTPUT_PARAMETERS = frozenset({
    "binary_data",  # HTTP: this output in the binary section (meaningless over gRPC: ignored)
    PARAMETER,
    # Triton's shared-memory extension (dagserve/shared_memory.py reads and checks them).
    "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
})
"""Every parameter a requested output may carry; any other is refused, not ignored."""

_FLOATS = frozenset({DataType.FP32, DataType.FP64})
_ORDER = ", ".join(dt.value for dt in DataType if dt in CLASSIFIABLE)


def check_output_parameters(
    owner: str, name: str, parameters: Mapping[str, Any], datatype: DataType
) -> None:
    """Check the parameters of requested output ``name`` (declared as ``datatype``) of model
    ``owner`` (e.g. ``"model 'm'"``): only known ones, and a usable ``classification``.

    Raises:
        InvalidInputError: an unknown parameter; ``classification`` that is not a positive
            integer, asked of an output of a datatype that cannot be classified, or together
            with shared memory. The message names the model, the output and the reason.
    """
    for key in parameters:
        if key not in OUTPUT_PARAMETERS:
            known = ", ".join(sorted(OUTPUT_PARAMETERS))
            raise InvalidInputError(
                f"{owner}: output '{name}': unknown parameter '{key}' (an output takes {known})"
            )
    if PARAMETER not in parameters:
        return
    count = parameters[PARAMETER]
    if type(count) is not int or count <= 0:
        shown = repr(count) if type(count) is not str else f"'{count}' (a string)"
        raise InvalidInputError(
            f"{owner}: output '{name}': 'classification' must be a positive integer "
            f"(the number of top classes to return), got {shown}"
        )
    if "shared_memory_region" in parameters:
        raise InvalidInputError(
            f"{owner}: output '{name}': an output can't set both 'shared_memory_region' and 'classification'"
        )
    if datatype not in CLASSIFIABLE:
        raise InvalidInputError(
            f"{owner}: output '{name}' cannot be classified: its datatype is {datatype.value} "
            f"(classification needs one of {_ORDER})"
        )


def requested_counts(request: InferRequest) -> dict[str, int] | None:
    """``{output: k}`` for the outputs ``request`` asks to classify, or ``None`` for none."""
    outputs = request.outputs
    if not outputs:
        return None
    counts = None
    for requested in outputs:
        params = requested.parameters
        if params and PARAMETER in params:
            if counts is None:
                counts = {}
            counts[requested.name] = params[PARAMETER]
    return counts


def apply(
    counts: Mapping[str, int],
    outputs: Mapping[str, Any],
    datatypes: Mapping[str, DataType],
    *,
    batched: bool,
    labels: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Any], dict[str, DataType]]:
    """``outputs`` and ``datatypes`` with each output named in ``counts`` replaced by its
    classification (a BYTES tensor, see :func:`classify`). Outputs absent from ``outputs`` (an
    optional output not produced) stay absent.

    Raises:
        InvalidInputError: a batch item of an output has more than
            :data:`MAX_CLASSIFICATION_ELEMENTS` elements.
    """
    new_outputs = dict(outputs)
    new_types = dict(datatypes)
    for name, count in counts.items():
        array = outputs.get(name)
        if array is None:
            continue
        new_outputs[name] = classify(
            array, datatypes[name], count, batched=batched, labels=labels.get(name, ()), name=name
        )
        new_types[name] = DataType.BYTES
    return new_outputs, new_types


def classify(
    array: Any,
    datatype: DataType,
    count: int,
    *,
    batched: bool,
    labels: Sequence[str] = (),
    name: str = "",
) -> np.ndarray:
    """The top ``count`` classes of ``array`` as a BYTES (object) array of ``bytes``.

    ``batched``: the first dimension is the batch, each item classified on its own (shape
    ``[batch, min(count, n)]``); otherwise the whole tensor is one item (shape
    ``[min(count, n)]``). Each element is ``b"value:index"`` or ``b"value:index:label"``, the
    label being ``labels[index]`` when that exists and is not empty.

    Raises:
        InvalidInputError: an item has more than :data:`MAX_CLASSIFICATION_ELEMENTS` elements.
    """
    host = to_host(array)
    shape = host.shape
    if batched and host.ndim > 0:
        items = shape[0]
        per_item = int(np.prod(shape[1:], dtype=np.int64))
    else:
        items, per_item = 1, int(host.size)
    if per_item > MAX_CLASSIFICATION_ELEMENTS:
        raise InvalidInputError(
            f"output '{name}': classification output tensor too large ({per_item} elements per "
            f"batch item, at most {MAX_CLASSIFICATION_ELEMENTS})"
        )
    rows = host.reshape(items, per_item)
    k = min(count, per_item)
    top = _top_indices(rows, k, floats=datatype in _FLOATS)
    values = np.take_along_axis(rows, top, axis=1)
    if datatype in _FLOATS:
        texts = [f"{v:f}" for v in values.astype(np.float64).ravel().tolist()]
    else:
        texts = [str(v) for v in values.ravel().tolist()]
    out = np.empty(items * k, dtype=np.object_)
    n_labels = len(labels)
    for i, (text, index) in enumerate(zip(texts, top.ravel().tolist())):
        label = labels[index] if index < n_labels else ""
        out[i] = f"{text}:{index}:{label}".encode() if label else f"{text}:{index}".encode()
    return out.reshape((items, k) if batched and host.ndim > 0 else (k,))


def _top_indices(rows: np.ndarray, k: int, *, floats: bool) -> np.ndarray:
    """Per row, the indices of the ``k`` largest values: largest first, equal values in index
    order, NaN after every number. ``k`` is at most the row length."""
    # An ascending key for a descending order: -x for floats (NaN stays NaN, which numpy
    # sorts last), ~x for integers (exact, without the overflow of -x at the type's minimum).
    desc = -rows if floats else ~rows
    if k == 0:
        return np.zeros((rows.shape[0], 0), dtype=np.intp)
    if 4 * k >= rows.shape[1]:
        return np.argsort(desc, axis=1, kind="stable")[:, :k]
    # Few of many (1000 classes, top 5): partition, then order only the k chosen. The choice
    # among values equal to the k-th is arbitrary, so a row where such a tie crosses the cut
    # (or the k-th is NaN) is sorted whole instead.
    chosen = np.argpartition(desc, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(desc, chosen, axis=1)
    cut = values.max(axis=1, keepdims=True)
    exact = (desc <= cut).sum(axis=1) == k
    order = np.take_along_axis(chosen, np.lexsort((chosen, values), axis=1), axis=1)
    for row in np.flatnonzero(~exact).tolist():
        order[row] = np.argsort(desc[row], kind="stable")[:k]
    return order
