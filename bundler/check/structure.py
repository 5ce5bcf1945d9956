"""FHIR R4 structure checks with fhir.resources' R4B models (R4 types that R4B dropped are not checked).

Every resource is validated with its own model class (`Communication.model_validate(...)`), which is
faster than validating the whole Bundle and gives paths relative to the entry. The entries' envelopes
(fullUrl, request, ...) are validated with `BundleEntry` once the resource is taken out. Pydantic's
errors become `fhir.structure` issues with `Bundle.entry[i].resource...` paths. Nothing is rewritten:
the models' output is thrown away and the input dicts are never handed back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

from ..vocabulary import TRANSACTION
from .issues import Issue, entry_path, make_issue


@cache
def _model(resource_type: str) -> Any:
    """fhir.resources' R4B model of `resource_type`, or None where R4B has none (R4 types it dropped, such as
    MedicinalProduct: their structure is not checked)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None


def _loc(loc: Iterable[Any]) -> tuple[str | int, ...]:
    """pydantic loc → path parts, dropping the validator-name segments pydantic adds for unions."""
    return tuple(p for p in loc if isinstance(p, int) or (isinstance(p, str) and "[" not in p and "-" not in p))


def _errors(model: Any, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    from pydantic import ValidationError

    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [dict(error) for error in exc.errors(include_url=False, include_input=False)]
    except (ValueError, TypeError) as exc:  # a few fhir.resources validators raise plain errors
        return [{"loc": (), "msg": str(exc)}]
    return []


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def entry_structure_issues(index: int, entry: Mapping[str, Any]) -> Iterator[Issue]:
    """fhir.structure issues of one entry: its resource with its own model, then the rest of the entry."""
    resource = entry.get("resource")
    model = _model(resource["resourceType"]) if isinstance(resource, dict) and isinstance(
        resource.get("resourceType"), str) else None
    if model is not None and isinstance(resource, dict):
        for err in _errors(model, resource):
            yield make_issue("fhir.structure", entry_path(index, "resource", *_loc(err["loc"])), _message(err), index)
    envelope = {k: v for k, v in entry.items() if k != "resource"}
    if envelope:
        for err in _errors(_model("BundleEntry"), envelope):
            yield make_issue("fhir.structure", entry_path(index, *_loc(err["loc"])), _message(err), index)


def bundle_structure_issues(bundle: Mapping[str, Any], skip: set[int] | frozenset[int] = frozenset()
                            ) -> list[Issue]:
    """fhir.structure issues of every entry not in `skip`, and of the Bundle's own elements."""
    out: list[Issue] = []
    entries = bundle.get("entry")
    shell = {k: v for k, v in bundle.items() if k != "entry"}
    if isinstance(entries, list):
        for i, entry in enumerate(entries):
            if i not in skip and isinstance(entry, dict):
                out.extend(entry_structure_issues(i, entry))
    shell.setdefault("type", TRANSACTION)  # a missing/bad type is bundle.type's to report
    for err in _errors(_model("Bundle"), shell):
        loc = _loc(err["loc"])
        if loc[:1] != ("type",):
            out.append(make_issue("fhir.structure", entry_path(None, *loc), _message(err)))
    return out
