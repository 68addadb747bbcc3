import pytest

from cmsaf_hub.service.options import (
    ClusterOptions,
    OptionField,
    OptionsError,
    fields_schema,
    resolve_fields,
    validate_options,
)


@pytest.fixture
def fields():
    return ClusterOptions().for_groups([])


def test_defaults_filled(fields):
    assert validate_options(fields, {}) == {"workers": 0, "cores": 1, "memory": 2.0, "image": None, "site": None}
    assert validate_options(fields, None)["cores"] == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "options must be a JSON object"),
        ({"gpus": 1}, "unknown option 'gpus'"),
        ({"workers": "2"}, "'workers' must be an integer"),
        ({"workers": True}, "'workers' must be an integer"),
        ({"workers": 1.5}, "'workers' must be an integer"),
        ({"workers": -1}, "'workers' must be at least 0"),
        ({"cores": 9}, "'cores' must be at most 8"),
        ({"memory": "lots"}, "'memory' must be a number"),
        ({"memory": float("nan")}, "'memory' must be a number"),
        ({"cores": None}, "'cores' must not be null"),
        ({"image": "evil/image"}, "'image' must be one of None"),
        ({"image": 3}, "'image' must be a string"),
    ],
)
def test_invalid(fields, body, message):
    with pytest.raises(OptionsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_options(fields, body)


def test_integral_float_and_int_memory_accepted(fields):
    opts = validate_options(fields, {"workers": 3.0, "memory": 4})
    assert opts["workers"] == 3 and isinstance(opts["workers"], int)
    assert opts["memory"] == 4.0 and isinstance(opts["memory"], float)


def test_group_overrides_most_permissive_wins():
    opts = ClusterOptions(
        group_overrides={
            "cms": {"cores": {"maximum": 16}, "image": {"choices": ["cms/analysis:1"]}},
            "admins": {"cores": {"maximum": 32, "minimum": 2}, "image": {"choices": ["cms/debug:1"]}},
        }
    )
    plain = {f.name: f for f in opts.for_groups(["other"])}
    assert plain["cores"].maximum == 8
    both = {f.name: f for f in opts.for_groups(["cms", "admins"])}
    assert both["cores"].maximum == 32 and both["cores"].minimum == 2
    # groups merge in name order: "admins" before "cms"
    assert both["image"].choices == (None, "cms/debug:1", "cms/analysis:1")
    assert validate_options(list(both.values()), {"cores": 30, "image": "cms/debug:1"})["cores"] == 30


def test_resolve_leaves_untouched_fields_identical():
    base = [OptionField("x", "integer", 1, minimum=0, maximum=2)]
    assert resolve_fields(base, {"g": {"y": {"maximum": 3}}}, ["g"]) == base


def test_schema_renders_bounds_choices_nullability(fields):
    schema = fields_schema(fields)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["cores"] == {
        "type": "integer", "description": "Cores (threads) per worker", "default": 1, "minimum": 1, "maximum": 8,
    }
    assert schema["properties"]["site"]["type"] == ["string", "null"]
    assert schema["properties"]["site"]["enum"] == [None]


def test_bad_field_config_rejected():
    with pytest.raises(ValueError, match="unknown keys"):
        OptionField.from_config({"name": "x", "kind": "integer", "default": 0, "max": 3})
