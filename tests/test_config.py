import pytest
import yaml

from clip_unlearn.config import ConfigError, Params, load_params


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
