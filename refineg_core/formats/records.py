"""The shape of one native JSONL record, checked strictly (never coerced) before it
becomes a Sample; unknown keys are ignored so newer files still read."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

Number = StrictInt | StrictFloat
#: The largest image side a record may state (Pillow refuses far smaller images).
MAX_SIDE = 1 << 20
Coords = Annotated[list[Number], Field(min_length=4, max_length=4)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EntityRecord(_Record):
    start: Annotated[StrictInt, Field(ge=0)]
    end: StrictInt
    type: Annotated[StrictStr, Field(min_length=1)]
    text: StrictStr = ""
    #: null: grounding not attempted / region unknown; []: not groundable
    boxes: list[Coords] | None = None
    confidence: Number | None = None
    uncertainty: Number | None = None
    source: StrictStr | None = None
    grounded_by: StrictStr | None = None


class ImageRecord(_Record):
    id: StrictStr | StrictInt | None = None
    path: StrictStr | None = None
    width: Annotated[StrictInt, Field(gt=0, le=MAX_SIDE)] | None = None
    height: Annotated[StrictInt, Field(gt=0, le=MAX_SIDE)] | None = None


class FailureRecord(_Record):
    stage: StrictStr
    kind: StrictStr
    message: StrictStr


class SampleRecord(_Record):
    id: StrictStr | StrictInt
    tokens: list[StrictStr] | None = None
    text: StrictStr | None = None
    image: ImageRecord | None = None
    entities: list[EntityRecord] = []
    failures: list[FailureRecord] = []
    meta: dict[str, Any] | None = None
