"""``--trace-config`` parsed as Triton reads it, and the sampling rule of one setting."""

from __future__ import annotations

import pytest

from dagserve.tracing import TraceConfig, Tracing, parse_trace_config


def test_triton_forms() -> None:
    """Global settings, repeated levels, a mode's own settings, and the other mode's ignored."""
    config = parse_trace_config([
        "mode=opentelemetry", "opentelemetry,url=collector:4318", "level=TENSORS", "level=timestamps",
        "rate=10", "count=5", "opentelemetry,resource=service.name=a", "opentelemetry,resource=team=b",
        "opentelemetry,bsp_max_export_batch_size=8", "triton,file=/ignored.json",
    ])
    assert config.mode == "opentelemetry" and config.url == "collector:4318"
    assert config.level == ("TIMESTAMPS", "TENSORS")  # Triton's order, whatever the flags'
    assert (config.rate, config.count, config.bsp_max_export_batch_size) == (10, 5, 8)
    assert config.resource == (("service.name", "a"), ("team", "b"))
    assert config.file == ""
    assert parse_trace_config(["triton,file=/t.json", "triton,log-frequency=50"]).log_frequency == 50
    assert parse_trace_config(["level=TIMESTAMPS", "level=OFF"]).level == ()  # OFF anywhere wins
    assert parse_trace_config([]) == TraceConfig()


@pytest.mark.parametrize(("flags", "message"), [
    (["rate"], "expected <setting>=<value>"),
    (["jaeger,url=x"], "invalid trace mode 'jaeger'"),
    (["opentelemetry,resource=novalue"], "expected resource=<key>=<value>"),
    (["opentelemetry,bsp_max_queue_size=4", "opentelemetry,bsp_max_export_batch_size=8", "mode=opentelemetry"],
     "must not exceed bsp_max_queue_size"),
])
def test_bad_flags(flags: list[str], message: str) -> None:
    """Malformed flags are refused with a message naming them."""
    with pytest.raises(ValueError, match=message):
        parse_trace_config(flags)


def test_sampling_follows_rate_and_count() -> None:
    """Every rate-th request is sampled until count runs out (counted down in the settings);
    a forced sample (a propagated context) is taken even then."""
    tracing = Tracing(TraceConfig(level=("TIMESTAMPS",), rate=2, count=2, file="/unused"))
    setting = tracing._global
    assert [setting.sample(False) for _ in range(6)] == [False, True, False, True, False, False]
    assert tracing.settings()["trace_count"] == "0"
    assert setting.sample(True)


def test_cli_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dagserve serve` reads --trace-config, or DAGSERVE_TRACE_CONFIG (space-separated) without it."""
    from dagserve.cli import _serve_options, build_parser

    def trace_of(*flags: str) -> TraceConfig:
        args = build_parser().parse_args(["serve", "--model-repository", "models", *flags])
        return _serve_options(args).server.trace

    monkeypatch.setenv("DAGSERVE_TRACE_CONFIG", "mode=opentelemetry level=TIMESTAMPS opentelemetry,url=otel:4318")
    from_env = trace_of()
    assert (from_env.mode, from_env.level, from_env.url) == ("opentelemetry", ("TIMESTAMPS",), "otel:4318")
    assert trace_of("--trace-config", "rate=7").rate == 7
    assert trace_of("--trace-config", "rate=7").mode == "triton"  # the flag wins over the environment
