import pytest
import yaml

from clip_unlearn.core.schema import ConfigError
from clip_unlearn.pipeline.config import Params, load_params


def write(tmp_path, data) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_repo_params_are_the_defaults(repo_params):
    assert repo_params == Params()


@pytest.mark.parametrize("data, key, hint", [
    ({"bootstrap": {"stepz": 3}}, "bootstrap.stepz", "allowed here: steps"),
    ({"nope": 1}, "nope", "allowed here: data, model"),
    ({"bootstrap": {"lr": -1}}, "bootstrap.lr", "greater than 0"),
    ({"data": {"datasets": ["digit"]}}, "data.datasets", "allowed: ['digits', 'shapes']"),
    ({"bootstrap": {"device": "tpu"}}, "bootstrap.device", "'auto', 'cpu'"),
    ({"evaluation": {"split": "train"}}, "evaluation.split", "'val' or 'test'"),
])
def test_bad_params_name_the_key(tmp_path, data, key, hint):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, data))
    assert f"{key}:" in str(err.value)
    assert hint in str(err.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(write(tmp_path, [1, 2]))
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")


def test_partial_file_fills_defaults(tmp_path):
    params = load_params(write(tmp_path, {"bootstrap": {"steps": 7}}))
    assert params.bootstrap.steps == 7
    assert params.bootstrap.batch_size == Params().bootstrap.batch_size


@pytest.mark.parametrize("data, says", [
    ({"verify": {"forget_max": 0.05}}, "rename `verify:` to `gate:`"),
    ({"targets": {"classes": {"forget_max": 0.05}}}, "delete `targets:`"),
    ({"assurance": {"relearn_forget_max": 0.5}}, "move `assurance.relearn_forget_max` to `gate.relearn_forget_max`"),
])
def test_old_gate_sections_are_refused_with_where_they_went(tmp_path, data, says):
    with pytest.raises(ConfigError, match="params.yaml") as err:
        load_params(write(tmp_path, data))
    assert says in str(err.value)


def test_a_request_type_for_what_to_forget_everywhere(repo_params):
    """The params default, the job request and the benchmark entries are all ForgetRequests."""
    from clip_unlearn.core.request import ForgetRequest

    assert isinstance(repo_params.forget, ForgetRequest)
    assert isinstance(repo_params.default_request(), ForgetRequest)
    assert all(isinstance(r, ForgetRequest) for r in [*repo_params.benchmark.multi_class,
                                                       *repo_params.benchmark.subgroups])
    assert repo_params.default_request().forget_request() == repo_params.forget.request
