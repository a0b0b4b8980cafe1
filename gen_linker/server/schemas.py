"""The HTTP service's request and response bodies (pydantic), i.e. its OpenAPI schema.

Limits live here so the schema states them: a text of at most `MAX_TEXT` characters, 1 to
`MAX_MENTIONS` mentions per request. Integers are `StrictInt`: JSON `true` is not an offset.
Checks that need two fields at once (a span inside its text) are made by the routes, which
answer 422 with the same error shape, naming the field (`loc`).
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

MAX_TEXT = 10_000          # characters of one text
MAX_MENTIONS = 256         # mentions (or REL spans) per request
MAX_BODY = 8 * 1024 * 1024  # bytes of one request body (images inline as base64 included)


class MentionIn(BaseModel):
    """One mention to link: `text` with the mention given as a string (its offsets are found),
    as offsets (`start`/`end`, the string is then text[start:end]) or both. `image`: base64
    data (a `data:image/...;base64,` URL or bare base64) or a path under the server's
    `--image-root`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["mention"]}, {"required": ["start", "end"]}]})

    id: Optional[str] = Field(None, max_length=256, description="echoed in the result; default: position, from 1")
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    mention: Optional[str] = Field(None, min_length=1, max_length=MAX_TEXT)
    start: Optional[StrictInt] = Field(None, ge=0, description="character offset of the mention in text")
    end: Optional[StrictInt] = Field(None, ge=1, description="end offset (exclusive)")
    image: Optional[str] = Field(None, min_length=1, max_length=MAX_BODY)


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mentions: list[MentionIn] = Field(min_length=1, max_length=MAX_MENTIONS)


class CandidateOut(BaseModel):
    entity_id: str
    name: str
    score: Optional[float]


class ResultOut(BaseModel):
    """A link result, as `gen-linker link` writes it; `entity_id` null is NIL."""

    id: str
    entity_id: Optional[str]
    name: Optional[str]
    score: Optional[float]
    candidates: list[CandidateOut]
    linker: str
    confidence: Optional[float] = None
    fallback: Optional[str] = None
    image_error: Optional[str] = None


class ErrorOut(BaseModel):
    """A mention that could not be linked, as the batch CLI's error records."""

    id: str
    error: str
    line: Optional[int] = None


class LinkResponse(BaseModel):
    results: list[Union[ResultOut, ErrorOut]]


class RELRequest(BaseModel):
    """REL's request (`NamedEntityConfig`): spans are `[start, length]`; none or `[]` means
    entity linking, with the mentions found by the gazetteer detector."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(max_length=MAX_TEXT)
    spans: Optional[list[tuple[StrictInt, StrictInt]]] = Field(None, max_length=MAX_MENTIONS)
    tagger: Optional[str] = Field(None, description="accepted for REL clients, not used")


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_TEXT)
    case: Literal["smart", "exact", "ignore"] = "smart"


class DetectedOut(BaseModel):
    start: int
    end: int
    mention: str


class DetectResponse(BaseModel):
    mentions: list[DetectedOut]


class KBInfo(BaseModel):
    size: int = Field(description="entities")
    name: str = Field(description="where the KB was read from")
    fingerprint: str
    linker: Optional[str] = Field(None, description="the loaded linker (null while loading)")


class EntityOut(BaseModel):
    id: str
    name: str
    aliases: list[str] = []
    description: Optional[str] = None
    image: Optional[str] = None


class Stats(BaseModel):
    batches: int
    mentions: int
    largest_batch: int
    mean_batch: float
    rejected: int = Field(description="requests refused with 503 (queue full)")
    cancelled: int = Field(description="requests whose client went away before the answer")
    dropped: int = Field(description="mentions of those requests never linked")
    queued: int = Field(description="mentions waiting now")


class Health(BaseModel):
    status: str
    error: Optional[str] = None


class Problem(BaseModel):
    detail: Union[str, list[dict]]


# Documented for every route (schemathesis checks that each status the service sends is one).
ERROR_RESPONSES = {
    400: {"model": Problem, "description": "the body is not valid JSON"},
    413: {"model": Problem, "description": f"the body is larger than {MAX_BODY} bytes"},
    415: {"model": Problem, "description": "the body is not sent as application/json"},
    422: {"model": Problem, "description": "a field is invalid (`loc` names it)"},
    503: {"model": Problem, "description": "the queue is full or the linker is still loading (see Retry-After)"},
}
