"""The sequence batcher: stateful models that see the requests of a sequence in order.

Semantics follow Triton's ``sequence_batching``. A request names its sequence with the
``sequence_id`` parameter (an integer or a string) and marks the first and last requests with
``sequence_start`` / ``sequence_end``. For each request the batcher:

* adds the configured control inputs — START, END, READY (true/false in the configured int32,
  fp32 or bool form) and CORRID (the sequence id);
* adds each implicit ``state`` input: its initial value (zeros) on START, afterwards what the
  model returned as the matching state output for the previous request of the sequence;
* keeps the requests of one sequence strictly in order (one in flight at a time), while
  requests of different sequences batch together in the inner scheduler (``direct``: sent
  at once; ``oldest``: with its ``max_queue_delay_microseconds`` and preferred sizes);
* forgets a sequence after its END request, or after ``max_sequence_idle_microseconds``
  without a request; a later request without START is then an error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskStatus

from ..backends.base import Outputs
from ..errors import InvalidInputError, ModelExecutionError
from ..repository.config import Control, ControlKind, ModelConfig, SequenceBatching
from ..types import DataType, InferRequest

__all__ = ["SequenceBatcher"]


class _Sequence:
    __slots__ = ("last_used", "lock", "state")

    def __init__(self, state: dict[str, np.ndarray], now: float) -> None:
        self.lock = anyio.Lock()
        self.state = state
        self.last_used = now


class SequenceBatcher:
    """A Runner that wraps an inner scheduler with per-sequence order and state."""

    def __init__(self, inner: Any, config: ModelConfig) -> None:
        assert config.sequence_batching is not None
        self._inner = inner
        self._name = config.name
        self._seq: SequenceBatching = config.sequence_batching
        self._batching = config.batching
        self._idle = self._seq.max_sequence_idle_microseconds / 1e6
        self._state_outputs = {s.output_name: s.input_name for s in self._seq.state}
        self._sequences: dict[int | str, _Sequence] = {}

    def statistics(self) -> dict[str, int]:
        return {"sequences": len(self._sequences)}

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs:
        """Run one request of a sequence; return its outputs without the state outputs.

        Raises:
            InvalidInputError: no ``sequence_id``, or no live sequence and no START flag.
        """
        corrid, start, end = self._sequence_flags(request)
        controls = self._controls(corrid, start=start, end=end)  # may refuse the id: before any state
        now = anyio.current_time()
        sequence = self._sequences.get(corrid)
        if start:
            sequence = _Sequence(self._initial_state(), now)
            self._sequences[corrid] = sequence
        elif sequence is None:
            raise InvalidInputError(
                f"model '{self._name}': sequence {corrid!r} has no START request "
                "(or it ended, or it was idle past max_sequence_idle_microseconds)"
            )
        async with sequence.lock:
            try:
                sequence.last_used = anyio.current_time()
                inputs = dict(request.inputs)
                inputs.update(controls)
                inputs.update(sequence.state)
                raw = await self._inner.submit(replace(request, inputs=inputs), batch_size)
                for output, state_input in self._state_outputs.items():
                    if output not in raw:
                        raise ModelExecutionError(
                            f"model '{self._name}' did not return its state output '{output}'"
                        )
                    sequence.state[state_input] = np.asarray(raw[output])
            finally:
                # The END request ends its sequence even when it fails or is cancelled.
                if end and self._sequences.get(corrid) is sequence:
                    del self._sequences[corrid]
        return {k: v for k, v in raw.items() if k not in self._state_outputs}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the inner scheduler and drop idle sequences, until cancelled."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._inner.run)
            task_status.started()
            if not self._idle:
                return
            while True:
                await anyio.sleep(max(self._idle / 2, 0.001))
                cutoff = anyio.current_time() - self._idle
                for corrid, sequence in list(self._sequences.items()):
                    if sequence.last_used < cutoff and not sequence.lock.locked():
                        del self._sequences[corrid]

    def _sequence_flags(self, request: InferRequest) -> tuple[int | str, bool, bool]:
        params = request.parameters
        corrid = params.get("sequence_id")
        if corrid is None or corrid == 0 or corrid == "":
            raise InvalidInputError(
                f"model '{self._name}' is stateful: the request needs a non-zero 'sequence_id' parameter"
            )
        if not isinstance(corrid, (int, str)) or isinstance(corrid, bool):
            raise InvalidInputError(f"parameter 'sequence_id' must be an integer or a string, not {corrid!r}")
        return corrid, bool(params.get("sequence_start", False)), bool(params.get("sequence_end", False))

    def _shape(self, dims: tuple[int, ...]) -> tuple[int, ...]:
        return (1, *dims) if self._batching else dims

    def _controls(self, corrid: int | str, *, start: bool, end: bool) -> dict[str, np.ndarray]:
        values = {
            ControlKind.CONTROL_SEQUENCE_START: start,
            ControlKind.CONTROL_SEQUENCE_END: end,
            ControlKind.CONTROL_SEQUENCE_READY: True,
        }
        tensors = {}
        for control_input in self._seq.control_input:
            for control in control_input.control:
                if control.kind is ControlKind.CONTROL_SEQUENCE_CORRID:
                    try:
                        tensors[control_input.name] = _corrid_tensor(corrid, control, self._shape((1,)))
                    except InvalidInputError as exc:
                        raise InvalidInputError(f"model '{self._name}': {exc}") from None
                else:
                    tensors[control_input.name] = _flag_tensor(values[control.kind], control, self._shape((1,)))
        return tensors

    def _initial_state(self) -> dict[str, np.ndarray]:
        state = {}
        for s in self._seq.state:
            dims = tuple(d if d > 0 else 1 for d in s.dims)
            for init in s.initial_state:
                if not init.get("zero_data", False):
                    raise InvalidInputError(
                        f"model '{self._name}': state '{s.input_name}': only zero_data initial states are supported"
                    )
                dims = tuple(int(d) for d in init.get("dims", dims))
            state[s.input_name] = np.zeros(self._shape(dims), dtype=s.data_type.numpy_dtype)
        return state


def _flag_tensor(value: bool, control: Control, shape: tuple[int, ...]) -> np.ndarray:
    if control.int32_false_true:
        return np.full(shape, control.int32_false_true[int(value)], dtype=np.int32)
    if control.fp32_false_true:
        return np.full(shape, control.fp32_false_true[int(value)], dtype=np.float32)
    if control.bool_false_true:
        return np.full(shape, control.bool_false_true[int(value)], dtype=np.bool_)
    return np.full(shape, value, dtype=np.int32)


def _corrid_tensor(corrid: int | str, control: Control, shape: tuple[int, ...]) -> np.ndarray:
    datatype = control.data_type or DataType.UINT64
    if datatype is DataType.BYTES:
        return np.full(shape, str(corrid).encode(), dtype=np.object_)
    if isinstance(corrid, str):
        raise InvalidInputError(f"sequence_id {corrid!r} is a string, but the model's CORRID control is {datatype.value}")
    dtype = datatype.numpy_dtype
    if dtype.kind not in "iu" or not np.iinfo(dtype).min <= corrid <= np.iinfo(dtype).max:
        raise InvalidInputError(f"sequence_id {corrid} does not fit the model's CORRID control ({datatype.value})")
    return np.full(shape, corrid, dtype=dtype)

