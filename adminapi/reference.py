"""The admin API reference for the console page, read from the OpenAPI schema the API serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from adminapi.api import api


@dataclass
class Field:
    name: str
    type: str
    required: bool
    description: str = ""


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    anchor: str
    parameters: list[Field] = field(default_factory=list)
    body: list[Field] = field(default_factory=list)
    responses: list[tuple[str, str]] = field(default_factory=list)


def _type(schema: dict, components: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s, components) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"list[{_type(schema.get('items', {}), components)}]"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else kind


def _fields(schema: dict, components: dict) -> list[Field]:
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    required = set(schema.get("required", []))
    return [
        Field(name, _type(prop, components), name in required, prop.get("description", ""))
        for name, prop in schema.get("properties", {}).items()
    ]


@cache
def api_reference() -> dict:
    schema = api.get_openapi_schema(path_prefix="/api/admin/v1")
    components = schema.get("components", {}).get("schemas", {})
    groups: dict[str, list[Operation]] = {}
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            operation = Operation(
                method=method.upper(),
                path=path,
                summary=op.get("summary", ""),
                anchor=op.get("operationId", f"{method}-{path}"),
                parameters=[
                    Field(
                        p["name"],
                        f"{p['in']}: {_type(p.get('schema', {}), components)}",
                        p.get("required", False),
                        p.get("description", ""),
                    )
                    for p in op.get("parameters", [])
                ],
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                operation.body = _fields(body, components)
            errors = set()
            for status, response in op.get("responses", {}).items():
                content = response.get("content", {}).get("application/json", {}).get("schema")
                kind = _type(content, components) if content else "no body"
                if str(status).startswith("4") and kind == "ErrorOut":
                    errors.add(status)  # every 4xx has the one error shape: listed once
                    continue
                operation.responses.append((status, kind))
            if errors:
                operation.responses.append(("4xx", 'ErrorOut: {"error": {"code", "message", "fields"}}'))
            groups.setdefault((op.get("tags") or ["other"])[0], []).append(operation)
    schemas = {name: _fields(s, components) for name, s in sorted(components.items())}
    return {"title": schema["info"]["title"], "description": schema["info"].get("description", ""), "groups": groups, "schemas": schemas}
