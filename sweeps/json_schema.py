"""The JSON Schema that `gatesweep schema` prints, for editors (yaml-language-server): the spec's sections
from sweeps.schema, with the trainer keys of base / grid / include / exclude / search.space typed from the
trainer's own config dataclasses (trainer.config_help.keys_table), so an editor flags `learning_rat:` or
`attn_gate: headwize` as it is typed. Loading a spec checks the same keys itself (sweeps.spec); this file
only describes them.
"""

from __future__ import annotations

import json
from typing import Any

from sweeps.schema import Spec
from sweeps.spec import CHAIN_KEYS
from sweeps.time_of import TIME_OF_KEYS
from trainer.config import PRESETS
from trainer.config_help import keys_table

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
# a spec sets a trial's seed through the top-level `seeds`, never in base/grid (sweeps.spec refuses it)
NOT_IN_SPECS = ("seed",)


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    if entry["choices"]:
        typed: dict[str, Any] = {"enum": entry["choices"]}
        return {"anyOf": [typed, {"type": "boolean"}]} if entry["key"] == "compile" else typed  # compile: true
    return {"type": _JSON_TYPES[entry["type"]]}


CHAINED = [{"$ref": "#/$defs/FromStage"}, {"$ref": "#/$defs/TimeOf"}]


def _chained() -> dict[str, Any]:
    """A value taken from another stage's results ({from: stage2, ...}) or time ({time_of: {...}})."""
    chain = {"type": "object", "required": ["from"], "additionalProperties": False,
             "properties": {k: {} for k in CHAIN_KEYS} | {"from": {"type": "string"},
                                                           "select": {"enum": ["best", "worst"]},
                                                           "metric": {"type": "string"}, "where": {"type": "object"}}}
    time_of = {"type": "object", "required": ["time_of"], "additionalProperties": False,
               "properties": {"time_of": {"type": "object", "additionalProperties": False,
                                          "properties": {k: {} for k in TIME_OF_KEYS}}}}
    return {"FromStage": chain, "TimeOf": time_of}


def trainer_values() -> dict[str, Any]:
    """{key: schema of its value} for every trainer key a spec may set (plain, chained or time_of)."""
    out: dict[str, Any] = {}
    for entry in keys_table():
        if entry["key"] in NOT_IN_SPECS:
            continue
        doc = f"{entry['doc']} (default {entry['default']!r})".strip()
        out[entry["key"]] = {"anyOf": [_plain(entry), *CHAINED], "description": doc}
    out["preset"] = {"enum": list(PRESETS), "description": "the config the other keys start from"}
    return out


def json_schema() -> str:
    schema = Spec.model_json_schema()
    values = trainer_values()
    props, defs = schema["properties"], schema.setdefault("$defs", {})
    defs |= _chained()
    defs["TrainerValues"] = {"type": "object", "properties": values, "additionalProperties": False,
                             "description": "trainer keys (gatesweep train --help-config) -> values"}
    # a design point may carry its own seeds (sweeps.spec)
    defs["DesignPoint"] = {"type": "object", "additionalProperties": False,
                           "properties": values | {"seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}}}}
    point = {"$ref": "#/$defs/TrainerValues"}
    props["base"] = point | {"description": "the trainer config every trial starts from"}
    props["grid"] = {"type": "object", "additionalProperties": False, "description": "axes: key -> list of values",
                     "properties": {k: {"type": "array", "minItems": 1, "items": v} for k, v in values.items()}}
    props["include"] = {"type": "array", "items": {"$ref": "#/$defs/DesignPoint"},
                        "description": "design points added to the grid (each may list its own seeds)"}
    props["exclude"] = {"type": "array", "items": point, "description": "grid points left out"}
    search = defs.get("Search", {}).get("properties", {}).get("space")
    if search is not None:
        search["propertyNames"] = {"enum": sorted(values)}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gatesweep sweep spec"
    return json.dumps(schema, indent=1)
