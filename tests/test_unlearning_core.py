import pytest
import torch
from conftest import run

from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.methods import DataFreeViolation, UnlearnContext, get_method

CLASSES = ["zero", "one", "seven"]
ATTRS = {"ink": ["red", "blue"], "background": ["black", "white"]}


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": ["sevn"]}, "did you mean 'seven'"),
    ({"classes": ["seven"], "where": {"colour": "red"}}, "unknown attribute 'colour'"),
    ({"classes": ["seven"], "where": {"ink": "rde"}}, "did you mean 'red'"),
    ({"classes": ["zero", "one", "seven"]}, "forgetting every class"),
    ({"classes": ["seven", "seven"]}, "names a class twice"),
])
def test_bad_requests_say_what_is_wrong(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ForgetRequest(dataset="digits", **kwargs).check(CLASSES, ATTRS)


def test_empty_forget_list_is_refused():
    with pytest.raises(Exception, match="at least 1 item"):
        ForgetRequest(dataset="digits", classes=[])


def test_every_class_of_a_subgroup_request_is_fine():
    req = ForgetRequest(dataset="digits", classes=CLASSES, where={"ink": "red"})
    assert req.check(CLASSES, ATTRS).is_subgroup


def test_unknown_method_lists_the_registry():
    with pytest.raises(ConfigError, match="allowed: .*projection"):
        get_method("nope")


def test_data_free_context_refuses_real_forget_images(tiny_params):
    ctx = UnlearnContext(ForgetRequest(dataset="digits", classes=["seven"]), tiny_params.data.root, data_free=True)
    assert len(ctx.retain_set("train")) > 0
    with pytest.raises(DataFreeViolation):
        ctx.forget_set("train")


def test_run_method_reports_before_and_after(tiny_params):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    res = run(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "projection", None,
              tiny_params.data.root, ["shapes"])
    for when in ("before", "after"):
        assert {"forget_top1", "retain_top1", "other_top1", "per_class"} <= set(res[when])
        assert set(res[when]["other"]) == {"shapes"}
    # a random model is not meaningful, but the projected model must differ from the original
    assert res["before"]["per_class"] != res["after"]["per_class"] or res["info"]["rank"] == 1


def test_benchmark_plan_covers_the_issue_and_places_the_oracle():
    from clip_unlearn.pipeline.benchmark import BenchmarkConfig, benchmark_requests

    plan = benchmark_requests(BenchmarkConfig())
    single = [r for r, _ in plan if len(r.classes) == 1 and not r.where]
    assert {r.dataset for r in single} == {"digits", "shapes"} and len(single) == 6
    assert any(len(r.classes) == 3 for r, _ in plan)
    assert sum(r.is_subgroup for r, _ in plan) == 3
    assert all("oracle" in methods for _, methods in plan)   # the yardstick for every named request
    first = benchmark_requests(BenchmarkConfig(oracle="first"))
    assert [r for r, methods in first if "oracle" in methods] == [single[0]]
