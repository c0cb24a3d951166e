"""Reports its own metrics as Triton's python_backend custom_metrics example does: a counter
of requests, a gauge of the last X, a histogram of X."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.requests_family = pb_utils.MetricFamily(
            name="custom_requests", description="Requests this model saw", kind=pb_utils.MetricFamily.COUNTER
        )
        self.requests = self.requests_family.Metric(labels=labels)
        self.last_family = pb_utils.MetricFamily(
            name="custom_last_x", description="The last X", kind=pb_utils.MetricFamily.GAUGE
        )
        self.last = self.last_family.Metric(labels=labels)
        self.x_family = pb_utils.MetricFamily(
            name="custom_x", description="X values", kind=pb_utils.MetricFamily.HISTOGRAM
        )
        self.x = self.x_family.Metric(labels=labels, buckets=[1.0, 10.0, 100.0])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = float(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0])
            self.requests.increment(1)
            self.last.set(x)
            self.x.observe(x)
            total = self.requests.value()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([total], np.float32))]))
        return responses
