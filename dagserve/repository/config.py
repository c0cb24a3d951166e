"""The model configuration schema: Triton's ``model_config.proto`` fields as pydantic v2 models.

One schema serves both forms a model may be configured in:

* ``config.pbtxt`` (Triton's protobuf text) is parsed by protobuf into a dict with Triton's
  field names, then validated here;
* ``config.yaml`` (native) uses the same field names, plus friendlier spellings: ``inputs`` /
  ``outputs`` for ``input`` / ``output``, ``datatype`` for ``data_type`` with or without the
  ``TYPE_`` prefix, ``shape`` for ``dims``, and plain ``key: value`` parameters.

Every object is frozen; unknown keys are errors (``extra="forbid"``), so a typo is reported with
the file and the field path instead of being silently ignored. Every field of Triton's schema
is declared; the few whose behaviour dagserve does not implement (``allow_ragged_batch``,
``rate_limiter``, ...) accept only their default, and any other value fails the load with the
field's path and "not supported by dagserve: <why>", never a silent no-op.
"""

from __future__ import annotations

import datetime
import enum
import itertools
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..types import DataType, TensorSpec

__all__ = [
    "HISTOGRAM_FAMILIES",
    "PIPELINE_BACKENDS",
    "PLATFORMS",
    "DynamicBatching",
    "EnsembleScheduling",
    "EnsembleStep",
    "InstanceGroup",
    "InstanceKind",
    "MetricControl",
    "ModelConfig",
    "ModelMetrics",
    "QueuePolicy",
    "RemoteConfig",
    "TensorConfig",
    "VersionPolicy",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _parse_datatype(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return DataType.parse(value)
        except ValueError:
            from .locations import did_you_mean

            names = [d.value for d in DataType] + [f"TYPE_{d.value}" for d in DataType]
            hint = did_you_mean(value.upper(), names) or " (expected e.g. FP32, INT64, BYTES)"
            raise ValueError(f"unknown datatype {value!r}{hint}") from None
    return value


def _unsupported(reason: str) -> AfterValidator:
    """Marks a field of Triton's schema that dagserve has no behaviour for: its default (unset,
    false, empty) is accepted, any other value fails with ``reason``."""

    def refuse(value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "not supported by dagserve: {reason}", {"reason": reason})
        return value

    return AfterValidator(refuse)


_TENSORRT_ONLY = "a TensorRT feature dagserve does not implement; remove it"


class Reshape(_Frozen):
    """The dims the model itself sees for a tensor (clients see ``dims``); see backends.reshape."""

    shape: tuple[int, ...] = ()

    @field_validator("shape")
    @classmethod
    def _shape_valid(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        for d in shape:
            if d < -1 or d == 0:
                raise ValueError(f"dimension {d} is invalid (use a positive size or -1 for any size)")
        return shape


class TensorConfig(_Frozen):
    """One ``input`` or ``output`` entry."""

    name: str
    data_type: DataType = Field(validation_alias=AliasChoices("data_type", "datatype"))
    dims: tuple[int, ...] = Field(default=(), validation_alias=AliasChoices("dims", "shape"))
    reshape: Reshape | None = None
    optional: bool = False
    allow_ragged_batch: Annotated[bool, _unsupported(
        "ragged batching is not implemented (requests are batched together only when their shapes "
        "match); remove it"
    )] = False
    is_shape_tensor: Annotated[bool, _unsupported(f"shape tensors are {_TENSORRT_ONLY}")] = False
    is_non_linear_format_io: Annotated[bool, _unsupported(f"non-linear I/O formats are {_TENSORRT_ONLY}")] = False
    # An output's class labels, one per line, in a file of the model directory (Triton's
    # classification extension, dagserve.classification); an input has none.
    label_filename: str = ""
    format: str = "FORMAT_NONE"  # informational in Triton too (the image client reads it)

    _datatype = field_validator("data_type", mode="before")(_parse_datatype)

    @field_validator("dims")
    @classmethod
    def _dims_valid(cls, dims: tuple[int, ...]) -> tuple[int, ...]:
        for d in dims:
            if d < -1 or d == 0:
                raise ValueError(f"dimension {d} is invalid (use a positive size or -1 for any size)")
        return dims

    def spec(self) -> TensorSpec:
        """The engine's view of this tensor."""
        return TensorSpec(
            name=self.name,
            datatype=self.data_type,
            shape=self.dims,
            optional=self.optional,
            allow_ragged_batch=self.allow_ragged_batch,
            reshape=self.reshape.shape if self.reshape else None,
        )


class VersionPolicy(_Frozen):
    """Which version directories are served: exactly one of latest, all, specific."""

    latest: dict[str, int] | None = None
    all: dict[str, Any] | None = None
    specific: dict[str, tuple[int, ...]] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set only one of latest, all, specific (got {', '.join(chosen)})")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available`` (sorted ascending)."""
        available = sorted(available)
        if self.all is not None:
            return available
        if self.specific is not None:
            wanted = set(self.specific.get("versions", ()))
            return [v for v in available if v in wanted]
        n = (self.latest or {}).get("num_versions", 1)
        return available[-n:] if n > 0 else []


class InstanceKind(str, enum.Enum):
    KIND_AUTO = "KIND_AUTO"
    KIND_GPU = "KIND_GPU"
    KIND_CPU = "KIND_CPU"
    KIND_MODEL = "KIND_MODEL"


class InstanceGroup(_Frozen):
    name: str = ""
    count: int = Field(default=1, ge=1)
    kind: InstanceKind = InstanceKind.KIND_AUTO
    gpus: tuple[int, ...] = ()
    rate_limiter: Annotated[Any, _unsupported(
        "there is no rate limiter (instances run whenever they are free, as Triton without "
        "--rate-limit); remove it"
    )] = None
    secondary_devices: Annotated[Any, _unsupported("secondary devices are not implemented; remove it")] = None
    profile: Annotated[Any, _unsupported(f"per-instance optimization profiles are {_TENSORRT_ONLY}")] = None
    passive: Annotated[bool, _unsupported("passive instances are not implemented; remove it")] = False
    host_policy: Annotated[str, _unsupported("host policies are not implemented; remove it")] = ""


class QueuePolicy(_Frozen):
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(default=0, ge=0)
    allow_timeout_override: bool = False
    max_queue_size: int = Field(default=0, ge=0)


class DynamicBatching(_Frozen):
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preserve_ordering: bool = False
    priority_levels: int = Field(default=0, ge=0)
    default_priority_level: int = Field(default=0, ge=0)
    default_queue_policy: QueuePolicy | None = None
    priority_queue_policy: dict[int, QueuePolicy] = Field(default_factory=dict)


class ControlKind(str, enum.Enum):
    CONTROL_SEQUENCE_START = "CONTROL_SEQUENCE_START"
    CONTROL_SEQUENCE_READY = "CONTROL_SEQUENCE_READY"
    CONTROL_SEQUENCE_END = "CONTROL_SEQUENCE_END"
    CONTROL_SEQUENCE_CORRID = "CONTROL_SEQUENCE_CORRID"


class Control(_Frozen):
    """How one control signal is given to the model (Triton's ``Control``)."""

    kind: ControlKind = ControlKind.CONTROL_SEQUENCE_START  # protobuf omits the zero enum value
    int32_false_true: tuple[int, ...] = ()
    fp32_false_true: tuple[float, ...] = ()
    bool_false_true: tuple[bool, ...] = ()
    data_type: DataType | None = None

    _datatype = field_validator("data_type", mode="before")(_parse_datatype)


class ControlInput(_Frozen):
    name: str
    control: tuple[Control, ...]


class SequenceState(_Frozen):
    """An implicit state tensor: fed to ``input_name``, updated from ``output_name``."""

    input_name: str
    output_name: str
    data_type: DataType
    dims: tuple[int, ...]
    initial_state: tuple[dict[str, Any], ...] = ()
    use_same_buffer_for_input_output: Annotated[bool, _unsupported(f"state buffer sharing is {_TENSORRT_ONLY}")] = False
    use_growable_memory: Annotated[bool, _unsupported(f"growable state memory is {_TENSORRT_ONLY}")] = False

    _datatype = field_validator("data_type", mode="before")(_parse_datatype)

    @field_validator("initial_state")
    @classmethod
    def _zero_data_only(cls, states: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for state in states:
            if state.get("data_file"):
                raise PydanticCustomError(
                    "unsupported",
                    "not supported by dagserve: an initial state read from data_file is not implemented; "
                    "use zero_data: true",
                )
        return states


class OldestStrategy(_Frozen):
    max_candidate_sequences: int = Field(default=0, ge=0)
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preserve_ordering: bool = False


class DirectStrategy(_Frozen):
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    minimum_slot_utilization: float = 0.0


class SequenceBatching(_Frozen):
    """Triton's ``ModelSequenceBatching``: stateful models fed one request per sequence."""

    max_sequence_idle_microseconds: int = Field(default=1_000_000, ge=0)
    control_input: tuple[ControlInput, ...] = ()
    direct: DirectStrategy | None = None
    oldest: OldestStrategy | None = None
    state: tuple[SequenceState, ...] = ()
    iterative_sequence: Annotated[bool, _unsupported("iterative sequences are not implemented; remove it")] = False


class EnsembleStep(_Frozen):
    model_name: str
    model_version: int = -1
    input_map: dict[str, str] = Field(default_factory=dict)
    output_map: dict[str, str] = Field(default_factory=dict)
    model_namespace: Annotated[str, _unsupported("model namespacing is not implemented; remove it")] = ""


class EnsembleScheduling(_Frozen):
    step: tuple[EnsembleStep, ...] = ()
    max_inflight_requests: int = Field(default=0, ge=0)


class TransactionPolicy(_Frozen):
    decoupled: bool = False


class ResponseCache(_Frozen):
    enable: bool = False


FIRST_RESPONSE_HISTOGRAM = "nv_inference_first_response_histogram_ms"
STEP_HISTOGRAM = "dagserve_pipeline_step_histogram_ms"
HISTOGRAM_FAMILIES = (FIRST_RESPONSE_HISTOGRAM, STEP_HISTOGRAM)
"""The histogram families whose buckets ``model_metrics`` may set: Triton's one, and dagserve's
per pipeline step (for pipelines)."""


class MetricIdentifier(_Frozen):
    family: str = ""


class HistogramOptions(_Frozen):
    buckets: tuple[float, ...] = Field(default=(), validate_default=True)

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets:
            raise ValueError("histogram options must specify non-empty 'buckets'")
        for bound in buckets:
            if not math.isfinite(bound):
                raise ValueError(f"bucket {bound} is not a finite number (the +Inf bucket is always there)")
        for low, high in itertools.pairwise(buckets):
            if not low < high:
                raise ValueError(f"buckets must be strictly increasing: {low} is followed by {high}")
        return buckets


class MetricControl(_Frozen):
    """One ``model_metrics.metric_control`` entry: a metric family and its options."""

    metric_identifier: MetricIdentifier | None = None
    histogram_options: HistogramOptions | None = None

    @model_validator(mode="after")
    def _complete(self) -> MetricControl:
        # Triton's checks (model_config_utils.cc), in its order and words; then dagserve's: a
        # family whose buckets cannot be set is an error here, where Triton only warns.
        if self.metric_identifier is None:
            raise ValueError("metric control must specify 'metric_identifier'")
        family = self.metric_identifier.family
        if not family:
            raise ValueError("metric identifier must specify non-empty 'family'")
        if self.histogram_options is None:
            raise ValueError("metric control must specify 'histogram_options'")
        if family not in HISTOGRAM_FAMILIES:
            from .locations import did_you_mean

            raise ValueError(
                f"metric family '{family}' has no buckets to set{did_you_mean(family, HISTOGRAM_FAMILIES)} "
                f"(the families whose buckets can be set: {', '.join(HISTOGRAM_FAMILIES)})"
            )
        return self


class ModelMetrics(_Frozen):
    """Per-model metric settings (Triton's ``model_metrics``): histogram buckets per family."""

    metric_control: tuple[MetricControl, ...] = ()

    @field_validator("metric_control")
    @classmethod
    def _once_each(cls, controls: tuple[MetricControl, ...]) -> tuple[MetricControl, ...]:
        seen: set[str] = set()
        for control in controls:
            family = control.metric_identifier.family if control.metric_identifier else ""
            if family in seen:
                raise ValueError(f"metric family '{family}' is set twice")
            seen.add(family)
        return controls

    def buckets(self, family: str) -> tuple[float, ...] | None:
        """The buckets set for ``family``, None when it keeps its defaults."""
        for control in self.metric_control:
            if control.metric_identifier and control.metric_identifier.family == family and control.histogram_options:
                return control.histogram_options.buckets
        return None


class RemoteConfig(_Frozen):
    """Where a ``backend: remote`` model is served (another KServe v2 server); see
    dagserve.backends.remote. ``url`` is one endpoint or a list (round robin over the healthy
    ones), each ``http://host:port`` or ``grpc://host:port``."""

    url: tuple[str, ...]
    model_name: str = ""  # "" = this model's own name
    model_version: str = ""  # "" = the remote's newest ready version
    timeout_ms: int = Field(default=0, ge=0)  # 0 = only the request's own deadline
    retries: int = Field(default=1, ge=0)  # more attempts, only after failures before sending
    binary: bool = True  # HTTP: tensors in the binary extension (False: JSON)
    max_connections: int = Field(default=16, ge=1)  # HTTP connections per endpoint; also calls in flight
    connect_timeout_ms: int = Field(default=2000, ge=1)
    health_interval_ms: int = Field(default=2000, ge=10)  # re-check of unreachable endpoints

    @field_validator("url", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        if isinstance(value, str):  # one URL, or (Triton parameters) a comma-separated list
            value = [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("url")
    @classmethod
    def _schemes(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        if not urls:
            raise ValueError("give at least one URL (http://host:port or grpc://host:port)")
        for url in urls:
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in ("http", "grpc") or not rest.strip("/"):
                raise ValueError(f"URL {url!r} must be http://host:port or grpc://host:port")
        return urls


class ModelConfig(_Frozen):
    """A model's configuration, with Triton's field names and defaults."""

    name: str = ""
    platform: str = ""
    backend: str = ""
    max_batch_size: int = Field(default=0, ge=0)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    input: tuple[TensorConfig, ...] = Field(default=(), validation_alias=AliasChoices("input", "inputs"))
    output: tuple[TensorConfig, ...] = Field(default=(), validation_alias=AliasChoices("output", "outputs"))
    instance_group: tuple[InstanceGroup, ...] = ()
    default_model_filename: str = ""
    dynamic_batching: DynamicBatching | None = None
    sequence_batching: SequenceBatching | None = None
    ensemble_scheduling: EnsembleScheduling | None = None
    # Native pipelines (backend: pipeline): the steps in YAML (checked by dagserve.dsl), or a
    # Python file in the model directory that builds the pipeline with the DSL.
    pipeline: dict[str, Any] | None = None
    pipeline_file: str | None = None
    # backend: remote (dagserve.backends.remote): the model is served by another server.
    remote: RemoteConfig | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    model_transaction_policy: TransactionPolicy = Field(default_factory=TransactionPolicy)
    response_cache: ResponseCache | None = None
    model_warmup: tuple[dict[str, Any], ...] = ()
    optimization: dict[str, Any] | None = None
    batch_input: Annotated[Any, _unsupported(
        "batch inputs (for ragged batching) are not implemented; remove it"
    )] = None
    batch_output: Annotated[Any, _unsupported("batch outputs (for ragged batching) are not implemented; remove it")] = None
    cc_model_filenames: Annotated[Any, _unsupported(
        "model files per GPU compute capability are not implemented; use default_model_filename"
    )] = None
    metric_tags: Annotated[Any, _unsupported("custom metric labels are not implemented; remove it")] = None
    model_operations: Annotated[Any, _unsupported("custom operation libraries are not implemented; remove it")] = None
    model_repository_agents: Annotated[Any, _unsupported("repository agents are not implemented; remove it")] = None
    runtime: Annotated[str, _unsupported("backend runtimes are not implemented; choose the model's backend with backend")] = ""
    model_metrics: ModelMetrics | None = None  # histogram buckets per family (see HISTOGRAM_FAMILIES)

    @field_validator("parameters", mode="before")
    @classmethod
    def _flatten_parameters(cls, value: Any) -> Any:
        # Triton writes parameters as {key: {string_value: "..."}}; YAML users write key: value,
        # where a number, boolean or date is kept as its text (Triton's parameters are strings).
        if isinstance(value, Mapping):
            out = {}
            for key, v in value.items():
                if isinstance(v, Mapping) and set(v) == {"string_value"}:
                    v = v["string_value"]
                if isinstance(v, bool):
                    v = "true" if v else "false"
                elif isinstance(v, (int, float)):
                    v = str(v)
                elif isinstance(v, (datetime.date, datetime.time)):
                    v = v.isoformat()
                elif not isinstance(v, str):
                    kind = "no value" if v is None else f"a {type(v).__name__}"
                    raise ValueError(  # noqa: TRY004 - pydantic reports ValueError as a field error
                        f"parameter '{key}' has {kind}, but a parameter value is text, a number or a boolean "
                        "(the model reads it as a string, as on Triton): quote it to pass it as text"
                    )
                out[key] = v
            return out
        return value

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> ModelConfig:
        for kind, tensors in (("input", self.input), ("output", self.output)):
            seen: set[str] = set()
            for t in tensors:
                if t.name in seen:
                    raise ValueError(f"{kind} '{t.name}' is declared twice")
                seen.add(t.name)
        return self

    @model_validator(mode="after")
    def _labels_on_outputs_only(self) -> ModelConfig:
        for t in self.input:
            if t.label_filename:
                raise ValueError(
                    f"input '{t.name}': label_filename is for outputs (class labels of the "
                    "classification extension); remove it"
                )
        return self

    @model_validator(mode="after")
    def _reshapes_possible(self) -> ModelConfig:
        # An input is reshaped to reshape.shape, an output back to dims: numpy can infer one
        # variable dimension of the target, not two; fixed shapes must hold as many elements.
        for kind, tensors in (("input", self.input), ("output", self.output)):
            for t in tensors:
                if t.reshape is None:
                    continue
                source, target = (t.dims, t.reshape.shape) if kind == "input" else (t.reshape.shape, t.dims)
                if target.count(-1) > 1:
                    raise ValueError(
                        f"{kind} '{t.name}': reshape from {list(source)} to {list(target)} is ambiguous "
                        "(at most one -1 in the target shape)"
                    )
                if -1 not in source and -1 not in target and _count(source) != _count(target):
                    raise ValueError(
                        f"{kind} '{t.name}': dims {list(t.dims)} and reshape {list(t.reshape.shape)} "
                        "hold different numbers of elements"
                    )
        return self

    @field_validator("model_metrics")
    @classmethod
    def _step_buckets_for_pipelines(cls, metrics: ModelMetrics | None, info: ValidationInfo) -> ModelMetrics | None:
        backend = info.data.get("backend") or _PLATFORM_BACKENDS.get(info.data.get("platform") or "", "")
        if metrics is not None and metrics.buckets(STEP_HISTOGRAM) is not None and backend not in PIPELINE_BACKENDS:
            raise ValueError(f"'{STEP_HISTOGRAM}' is measured per step of a pipeline, and this model is not one")
        return metrics

    @property
    def batching(self) -> bool:
        """True when the first dimension of every tensor is the batch (``max_batch_size > 0``)."""
        return self.max_batch_size > 0

    @property
    def backend_name(self) -> str:
        """The backend that runs this model: ``backend`` if set, else one implied by ``platform``."""
        if self.backend:
            return self.backend
        return _PLATFORM_BACKENDS.get(self.platform, self.platform)

    @property
    def is_pipeline(self) -> bool:
        """Whether this is a pipeline (a Triton ensemble or a dagserve pipeline), served by
        the engine from its members rather than by a backend from model files."""
        return self.backend_name in PIPELINE_BACKENDS

    def input_specs(self) -> dict[str, TensorSpec]:
        return {t.name: t.spec() for t in self.input}

    def output_specs(self) -> dict[str, TensorSpec]:
        return {t.name: t.spec() for t in self.output}

    def to_triton_json(self) -> dict[str, Any]:
        """This config in the JSON shape Triton's ``/config`` endpoint returns."""
        data = self.model_dump(mode="json", exclude_none=True)
        for kind in ("input", "output"):
            for t in data.get(kind, ()):
                t["data_type"] = DataType(t["data_type"]).config_name
                if t.get("reshape") is None:
                    t.pop("reshape", None)
        data["parameters"] = {k: {"string_value": v} for k, v in self.parameters.items()}
        if self.dynamic_batching is not None:
            data["dynamic_batching"]["priority_queue_policy"] = {
                str(k): v for k, v in data["dynamic_batching"]["priority_queue_policy"].items()
            }
        vp = data.get("version_policy", {})
        if not vp:
            data["version_policy"] = {"latest": {"num_versions": 1}}
        return data


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


PIPELINE_BACKENDS = ("ensemble", "pipeline")
"""The backend names of pipelines (see :attr:`ModelConfig.is_pipeline`)."""

_PLATFORM_BACKENDS = {
    "pytorch_libtorch": "pytorch",
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "ensemble": "ensemble",
    "pipeline": "pipeline",
}
PLATFORMS = tuple(_PLATFORM_BACKENDS)
"""The ``platform`` names dagserve knows (each implies a backend)."""
