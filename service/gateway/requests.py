"""Parsing request bodies into pydantic models, with problem details that name the field."""

import json
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class InvalidRequest(Exception):
    """422 with the fields at fault: [{"field": "a.b", "reason": "..."}]. Never echoes input values."""

    def __init__(self, errors: list[dict[str, str]], detail: str = "the request body is not valid"):
        super().__init__(detail)
        self.errors = errors


def _field(loc) -> str:
    return ".".join(str(part) for part in loc)


async def parse_json(request: web.Request, model: type[Model]) -> Model:
    raw = await request.read()
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest([{"field": "", "reason": f"not valid JSON: {type(exc).__name__}"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest([{"field": _field(e["loc"]), "reason": e["msg"]} for e in exc.errors()]) from None
