"""Execution plans: slots and wiring fixed at load time, routes pruned to the requested outputs."""

from __future__ import annotations

from dagserve import ModelConfig, Pipeline
from dagserve.dsl import check_pipeline
from dagserve.dsl.plan import Plan, build_plan
from dagserve.dsl.typecheck import Adapt


def member(name: str, batch: int = 0, dims: list[int] | None = None) -> ModelConfig:
    shape = dims or [-1]
    return ModelConfig.model_validate(
        {
            "name": name,
            "backend": "python",
            "max_batch_size": batch,
            "inputs": [{"name": "X", "datatype": "FP32", "shape": shape}],
            "outputs": [
                {"name": "Y", "datatype": "FP32", "shape": shape},
                {"name": "Z", "datatype": "FP32", "shape": shape},
            ],
        }
    )


def plan_of(p: Pipeline, batched: tuple[str, ...] = ()) -> Plan:
    def lookup(name: str, version: int) -> ModelConfig:
        return member(name, 8, [4]) if name in batched else member(name, 0, [4] if batched else None)

    return build_plan(check_pipeline(p.build(), lookup))


def chain(n: int) -> Pipeline:
    p = Pipeline("chain")
    p.input("X", "FP32", [-1])
    source = "X"
    for i in range(n):
        p.step(f"s{i}", "m", inputs={"X": source})
        source = f"s{i}.Y"
    p.output("Y", source)
    return p


def test_a_chain_runs_sequentially() -> None:
    """A linear chain is flagged sequential: the executor spawns no task for it."""
    route = plan_of(chain(4)).route(None)
    assert route.sequential and route.steps == (0, 1, 2, 3)


def test_branches_are_not_sequential() -> None:
    """Two steps reading only the input can overlap; the join waits for both."""
    p = Pipeline("fan")
    p.input("X", "FP32", [-1])
    p.step("a", "m", inputs={"X": "X"})
    p.step("b", "m", inputs={"X": "X"})
    p.step("join", "m", inputs={"X": "a.Y"}, when="b.Y > 0")
    p.output("Y", "join.Y", optional=True)
    plan = plan_of(p)
    route = plan.route(None)
    assert not route.sequential
    assert route.roots == (0, 1)
    assert route.remaining[2] == 2 and route.successors[0] == (2,) and route.successors[1] == (2,)


def test_routes_are_pruned_to_the_requested_outputs() -> None:
    """Only the steps an output needs are in its route."""
    p = Pipeline("two_heads")
    p.input("X", "FP32", [-1])
    p.step("trunk", "m", inputs={"X": "X"})
    p.step("left", "m", inputs={"X": "trunk.Y"})
    p.step("right", "m", inputs={"X": "trunk.Z"})
    p.output("L", "left.Y")
    p.output("R", "right.Y")
    plan = plan_of(p)
    names = {s.index: s.name for s in plan.steps}
    assert [names[i] for i in plan.route(["L"]).steps] == ["trunk", "left"]
    assert plan.route(["L"]).sequential
    assert [names[i] for i in plan.route(None).steps] == ["trunk", "left", "right"]


def test_steps_request_only_the_outputs_that_are_read() -> None:
    """A step asks its model only for outputs something reads; simple steps take the fast path."""
    plan = plan_of(chain(2))
    first = plan.steps[0]
    assert [o.name for o in first.requested] == ["Y"]
    assert first.simple == (("X", 0),)


def test_batch_dimension_adapters_are_planned() -> None:
    """A non-batching producer feeding a batching model gets a batch dimension added."""
    p = Pipeline("adapt")
    p.input("X", "FP32", [4])
    p.step("plain", "plain", inputs={"X": "X"})
    p.step("batched", "batched", inputs={"X": "plain.Y"})
    p.step("back", "plain2", inputs={"X": "batched.Y"})
    p.output("Y", "back.Y")
    plan = plan_of(p, batched=("batched",))
    assert plan.steps[1].wires[0].candidates[0].adapt is Adapt.EXPAND
    assert plan.steps[1].simple is None
    assert plan.steps[2].wires[0].candidates[0].adapt is Adapt.SQUEEZE
