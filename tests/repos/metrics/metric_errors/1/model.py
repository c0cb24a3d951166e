"""Tries the metric operation the input CASE names and answers with the exception it raised
(type and message), or "ok"."""

import numpy as np
import triton_python_backend_utils as pb_utils

F = pb_utils.MetricFamily
KEEP = []  # families stay alive: a Metric of a deleted family is unusable, as on Triton


def family(name, description, kind):
    created = F(name, description, kind)
    KEEP.append(created)
    return created


def run(case):
    if case == "counter_negative":
        family("err_counter", "c", F.COUNTER).Metric().increment(-1)
    elif case == "counter_set":
        family("err_counter", "c", F.COUNTER).Metric().set(3)
    elif case == "counter_observe":
        family("err_counter", "c", F.COUNTER).Metric().observe(3)
    elif case == "gauge_observe":
        family("err_gauge", "g", F.GAUGE).Metric().observe(3)
    elif case == "histogram_value":
        family("err_hist", "h", F.HISTOGRAM).Metric(buckets=[1.0]).value()
    elif case == "histogram_increment":
        family("err_hist", "h", F.HISTOGRAM).Metric(buckets=[1.0]).increment(1)
    elif case == "histogram_no_buckets":
        family("err_hist", "h", F.HISTOGRAM).Metric()
    elif case == "counter_buckets":
        family("err_counter", "c", F.COUNTER).Metric(buckets=[1.0])
    elif case == "labels_not_dict":
        family("err_counter", "c", F.COUNTER).Metric(labels=["a"])
    elif case == "label_not_string":
        family("err_counter", "c", F.COUNTER).Metric(labels={"a": 1})
    elif case == "kind_clash":
        keep = F("err_clash", "c", F.COUNTER)
        F("err_clash", "g", F.GAUGE)
        del keep
    elif case == "reserved_name":
        F("nv_inference_count", "c", F.COUNTER)
    elif case == "bad_name":
        F("bad-name", "c", F.COUNTER)
    elif case == "family_deleted":
        metric = F("err_gone", "g", F.GAUGE).Metric()  # the family object is dropped at once
        metric.set(1)
    elif case == "same_labels_same_metric":
        shared = family("err_shared", "g", F.GAUGE)
        a, b = shared.Metric(labels={"k": "v"}), shared.Metric(labels={"k": "v"})
        a.set(5)
        return f"ok {b.value()}"
    return "ok"


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            case = pb_utils.get_input_tensor_by_name(request, "CASE").as_numpy()[0].decode()
            try:
                message = run(case)
            except Exception as exc:  # the point: report what the metric API raised
                message = f"{type(exc).__name__}: {exc}"
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("MESSAGE", np.array([message.encode()], dtype=object))]
            ))
        return responses
