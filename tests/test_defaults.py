"""One source per default: the config schema (workflow/schemas/config.schema.yaml) fills every section's defaults;
the dataclasses that code builds without a config (TrainSettings, FormatConfig, RetentionSettings) must declare
the same defaults for the same settings, every field. These tests pin them, so a default changed in one place
and not in the other fails here rather than making a run differ from its config."""
import dataclasses

import pytest

from gemsbench.config import schema
from gemsbench.formats import FORMATS, FormatConfig, PromptFormat, TimelineFormat
from gemsbench.retention import RetentionSettings
from gemsbench.train import TrainSettings


def schema_defaults(section: str) -> dict:
    return {k: v["default"] for k, v in schema()["properties"][section]["properties"].items() if "default" in v}


def dataclass_defaults(cls) -> dict:
    return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


#: FormatConfig field -> the train setting it is built from (gemsbench.train.TrainSettings.format_config)
FORMAT_FIELDS = {"name": "format", "max_history": "max_history", "rec_history": "rec_history",
                 "history_separator": "history_separator"}


def test_format_config_defaults_are_the_schemas():
    train, fmt = schema_defaults("train"), dataclass_defaults(FormatConfig)
    for field, setting in FORMAT_FIELDS.items():
        assert fmt[field] == train[setting], field
    # the templates' schema default {} means "the release's templates", FormatConfig's default
    assert train["templates"] == {} and set(fmt["templates"]) == {"rec", "search"}


def test_format_config_is_built_from_the_train_settings_field_by_field():
    cfg = TrainSettings(format="prompt", max_history=7, rec_history="all", history_separator=", ").format_config()
    assert (cfg.name, cfg.max_history, cfg.rec_history, cfg.history_separator) == ("prompt", 7, "all", ", ")


def test_retention_settings_defaults_are_the_schemas():
    declared = schema_defaults("retention")
    declared.pop("seeds")  # which runs the DAG measures, not how: no field of the measurement
    assert dataclass_defaults(RetentionSettings) == declared


def test_one_strategy_per_format_and_the_schema_offers_exactly_those():
    assert set(FORMATS) == set(schema()["properties"]["train"]["properties"]["format"]["enum"])
    assert isinstance(FORMATS["prompt"], PromptFormat) and isinstance(FORMATS["timeline"], TimelineFormat)
    with pytest.raises(ValueError, match="unknown training format 'chat'"):
        FormatConfig(name="chat")
