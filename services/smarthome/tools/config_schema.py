"""The config's JSON Schema, emitted from the msgspec types that validate it.

Shipped as config/smarthome.schema.json, which the shipped configs name in their first line, so a YAML
editor (yaml-language-server) completes and checks them. `smarthome schema` prints it; a test keeps the
shipped file current.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from smarthome.core.config import ServiceConfig, _Settings


def json_schema() -> dict[str, Any]:
    # The loader validates the top level and then each service on its own (to name the service in errors);
    # the schema describes the whole file at once: the top-level fields, with every service typed.
    top_level = msgspec.structs.fields(_Settings)
    fields = [
        (f.name, dict[str, ServiceConfig] if f.name == "services" else f.type)
        if f.default is msgspec.NODEFAULT
        else (f.name, f.type, f.default)
        for f in top_level
    ]
    document = msgspec.defstruct("SmarthomeConfig", fields, forbid_unknown_fields=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **msgspec.json.schema(document)}


def render() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
