"""Client-side option validation against the service's JSON Schema (pure)."""

import pytest

from cmsaf_hub.client.errors import OptionsError
from cmsaf_hub.client.options import describe, parse_text, validate_options

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "workers": {"type": "integer", "minimum": 0, "maximum": 50, "default": 0},
        "cores": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
        "memory": {"type": "number", "minimum": 0.5, "maximum": 16.0, "default": 2.0},
        "image": {"type": ["string", "null"], "enum": [None, "cms:el9", "cms:el8"]},
        "site": {"type": ["string", "null"]},
        "gpu": {"type": "boolean"},
    },
}


def test_valid_options_are_normalised_and_defaults_left_to_the_service():
    assert validate_options(SCHEMA, {"workers": 3, "memory": 4, "image": "cms:el9"}) == {
        "workers": 3,
        "memory": 4.0,
        "image": "cms:el9",
    }
    assert validate_options(SCHEMA, {}) == {}
    assert validate_options(SCHEMA, {"cores": 2.0, "site": None}) == {"cores": 2, "site": None}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cores": 9}, "invalid value 9 for option 'cores': must be an integer from 1 to 8"),
        ({"cores": 1.5}, "invalid value 1.5 for option 'cores': must be an integer from 1 to 8"),
        ({"cores": True}, "option 'cores'"),
        ({"workers": -1}, "must be an integer from 0 to 50"),
        ({"memory": "big"}, "invalid value 'big' for option 'memory': must be a number from 0.5 to 16"),
        ({"memory": float("nan")}, "option 'memory'"),
        ({"image": "ubuntu"}, "invalid value 'ubuntu' for option 'image': must be one of None, 'cms:el9', 'cms:el8'"),
        ({"cores": None}, "must be an integer from 1 to 8"),
        ({"site": 3}, "must be a string (or None)"),
        ({"gpu": "yes"}, "must be true or false"),
        ({"colour": "red"}, "unknown option 'colour'; available options: cores, gpu, image, memory, site, workers"),
    ],
)
def test_invalid_options_name_the_option_and_what_it_accepts(options, message):
    with pytest.raises(OptionsError) as info:
        validate_options(SCHEMA, options)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # so generic "except ValueError" code catches it


def test_describe_open_bounds():
    assert describe({"type": "integer", "minimum": 1}) == "an integer >= 1"
    assert describe({"type": "number", "maximum": 2.5}) == "a number <= 2.5"
    assert describe({"type": "string"}) == "a string"


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("workers", "4", 4),
        ("memory", "2.5", 2.5),
        ("memory", "3", 3.0),
        ("image", "none", None),
        ("image", "cms:el9", "cms:el9"),
        ("gpu", "yes", True),
        ("gpu", "off", False),
    ],
)
def test_parse_text_gives_json_types(name, text, value):
    parsed = parse_text(SCHEMA, name, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("workers", "four", "invalid value 'four' for option 'workers'"),
        ("gpu", "maybe", "must be true or false"),
        ("colour", "red", "unknown option 'colour'"),
    ],
)
def test_parse_text_errors(name, text, message):
    with pytest.raises(OptionsError, match=message):
        parse_text(SCHEMA, name, text)


def test_cluster_options_object_reads_and_checks_like_dask_gateways_options():
    from cmsaf_hub.client import ClusterOptions

    options = ClusterOptions(SCHEMA)
    assert dict(options) == {"workers": 0, "cores": 1, "memory": 2.0, "image": None, "site": None, "gpu": None}
    options.cores = 2
    options["memory"] = 4
    assert (options.cores, options["memory"]) == (2, 4.0)
    with pytest.raises(OptionsError, match="invalid value 9 for option 'cores': must be an integer from 1 to 8"):
        options.cores = 9
    assert options.cores == 2  # a refused value leaves the last good one
    with pytest.raises(AttributeError, match="no option 'colour'; available options: workers, cores, memory"):
        options.colour = "red"
    with pytest.raises(KeyError, match="no option 'colour'"):
        options["colour"]
    with pytest.raises(TypeError, match="cannot be deleted"):
        del options["cores"]
    assert "cores" in dir(options) and options.schema is SCHEMA
    assert repr(options).startswith("ClusterOptions<workers=0, cores=2, memory=4.0, image=None")
    assert options.description("cores") == "cores: an integer from 1 to 8"


def test_cluster_options_form_sets_the_options():
    from cmsaf_hub.client import ClusterOptions

    options = ClusterOptions(SCHEMA)
    form = options.widget()
    fields = {w.description: w for w in form.children[1:]}
    assert list(fields) == ["workers", "cores", "memory", "image", "site", "gpu"]
    assert (type(fields["cores"]).__name__, fields["cores"].min, fields["cores"].max) == ("BoundedIntText", 1, 8)
    assert type(fields["memory"]).__name__ == "BoundedFloatText"
    assert [value for _, value in fields["image"].options] == [None, "cms:el9", "cms:el8"]
    assert type(fields["gpu"]).__name__ == "Checkbox"
    fields["cores"].value = 4
    fields["image"].value = "cms:el8"
    fields["gpu"].value = True
    fields["site"].value = "T2_XX"
    assert (options.cores, options.image, options.gpu, options.site) == (4, "cms:el8", True, "T2_XX")
    fields["site"].value = ""  # an emptied text field means "no choice" for a nullable option
    assert options.site is None
    assert options.widget() is form
