"""CRM methods: contacts, companies, leads, deals, duplicate search and activities (spec §6).

CRM-family errors come as ``{"error": "", "error_description": ...}`` with HTTP 400 (§4.3, §9).
The CRM REST layer reads its parameters under either case (``id``/``ID``, ``fields``/``FIELDS``),
so both are accepted here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitrix24_emulator.errors import RestError, error_core
from bitrix24_emulator.methods.registry import CallContext, ListResult, method
from bitrix24_emulator.store.crm import CrmValidationError, multifield_values
from bitrix24_emulator.store.query import Page, parse_order

# Entity type → (REST name, the word its update error uses).
_ENTITIES = {
    "CONTACT": ("contact", "Contact"),
    "COMPANY": ("company", "Company"),
    "LEAD": ("lead", "Lead"),
    "DEAL": ("deal", "Deal"),
}
# Currencies of a default Russian portal (crm.currency.list); others are refused by deal.add.
CURRENCIES = frozenset({"RUB", "USD", "EUR", "UAH", "BYN", "KZT"})
FINDBYCOMM_MAX_VALUES = 20
# findbycomm walks the types in this order and stops after one with 20 or more matches (§6.4).
_FINDBYCOMM_ORDER = ("LEAD", "CONTACT", "COMPANY")
_FINDBYCOMM_LIMIT = 20


def crm_error(description: str) -> RestError:
    """A CRM-family error: empty ``error`` code, HTTP 400."""
    return RestError("", description, 400)


def _param(params: Mapping[str, Any], name: str) -> Any:
    """A parameter under its lower- or upper-case name (``CCrmRestService::resolveParam``)."""
    if name in params:
        return params[name]
    if name.upper() in params:
        return params[name.upper()]
    for key, value in params.items():
        if str(key).lower() == name:
            return value
    return None


def _array_param(params: Mapping[str, Any], name: str, message: str) -> dict[str, Any]:
    """An optional array parameter as a dict; a scalar gets ``message``.

    A PHP list is an array too: a list filter names fields "0", "1"..., which match nothing
    known and are ignored.
    """
    value = _param(params, name)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    raise crm_error(message)


def _select(params: Mapping[str, Any]) -> list[str]:
    value = _param(params, "select")
    return [str(v) for v in multifield_values(value)]


def _entity_id(params: Mapping[str, Any]) -> int:
    value = _param(params, "id")
    try:
        entity_id = int(str(value).strip())
    except ValueError:
        entity_id = 0
    if isinstance(value, bool) or entity_id <= 0:
        raise crm_error("ID is not defined or invalid.")
    return entity_id


def _fields(params: Mapping[str, Any]) -> dict[str, Any]:
    value = _param(params, "fields")
    if not isinstance(value, Mapping):
        raise crm_error("Parameter 'fields' must be array.")
    # "params" (REGISTER_SONET_EVENT, IMPORT...) changes nothing here but must be an array.
    extra = _param(params, "params")
    if extra is not None and not isinstance(extra, Mapping | list):
        raise crm_error("Parameter 'params' must be array")
    return {str(k).upper(): v for k, v in value.items()}


def _check_fields(entity_type: str, fields: Mapping[str, Any]) -> None:
    currency = fields.get("CURRENCY_ID")
    if entity_type == "DEAL" and currency not in (None, "") and str(currency) not in CURRENCIES:
        # The text of this error is UNCONFIRMED; the spec only says deal.add refuses it.
        raise crm_error(f"Currency '{currency}' is not found.")


def list_result(page: Page) -> ListResult | list[dict[str, Any]]:
    """A page as the envelope wants it: no ``total``/``next`` at all in ``start=-1`` mode."""
    if page.total is None:
        return page.items
    return ListResult(page.items, page.total, page.next)


def _register_entity(entity_type: str) -> None:
    rest_name, word = _ENTITIES[entity_type]

    @method(f"crm.{rest_name}.list", scope="crm")
    def list_(ctx: CallContext, params: dict[str, Any]) -> ListResult | list[dict[str, Any]]:
        conditions = _array_param(params, "filter", "Parameter 'filter' must be array")
        order = _array_param(params, "order", "Parameter 'order' must be array")
        page = ctx.portal.crm.query(
            entity_type,
            conditions=conditions,
            order=parse_order(order),
            select=_select(params),
            start=_param(params, "start"),
        )
        return list_result(page)

    @method(f"crm.{rest_name}.get", scope="crm")
    def get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        record = ctx.portal.crm.entity(entity_type, _entity_id(params))
        if record is None:
            raise crm_error("Not found")
        return record

    @method(f"crm.{rest_name}.add", scope="crm")
    def add(ctx: CallContext, params: dict[str, Any]) -> int:
        fields = _fields(params)
        _check_fields(entity_type, fields)
        try:
            return ctx.portal.crm.add(entity_type, fields, now=ctx.now, user_id=ctx.caller.user_id)
        except CrmValidationError as err:
            raise error_core(str(err)) from err

    @method(f"crm.{rest_name}.update", scope="crm")
    def update(ctx: CallContext, params: dict[str, Any]) -> bool:
        entity_id = _entity_id(params)
        fields = _fields(params)
        _check_fields(entity_type, fields)
        if not ctx.portal.crm.exists(entity_type, entity_id):
            raise crm_error(f"{word} is not found")
        try:
            ctx.portal.crm.update(
                entity_type, entity_id, fields, now=ctx.now, user_id=ctx.caller.user_id
            )
        except CrmValidationError as err:
            raise error_core(str(err)) from err
        return True


for _entity_type in _ENTITIES:
    _register_entity(_entity_type)


@method("crm.duplicate.findbycomm", scope="crm")
def duplicate_findbycomm(
    ctx: CallContext, params: dict[str, Any]
) -> dict[str, list[int]] | list[Any]:
    """Ids of leads, contacts and companies having any of the phones or e-mails (§6.4)."""
    raw_type = _param(params, "type")
    comm_type = str(raw_type).strip().upper() if raw_type not in (None, "") else ""
    if not comm_type:
        # The docs' example puts the code text in "error" here, unlike the other CRM errors.
        raise RestError("Communication type is not defined", "Parameter 'type' is required.", 400)
    if comm_type not in ("PHONE", "EMAIL"):
        raise crm_error(f"Communication type '{raw_type}' is not supported in current context")
    values = [str(v).strip() for v in multifield_values(_param(params, "values"))]
    values = [v for v in values if v]
    if not values:
        raise crm_error("Communication values is not defined")
    if len(values) > FINDBYCOMM_MAX_VALUES:
        # The limit is documented; the error for passing it is UNCONFIRMED.
        raise crm_error(f"Too many communication values. The maximum is {FINDBYCOMM_MAX_VALUES}.")
    raw_entity = _param(params, "entity_type")
    if raw_entity in (None, ""):
        entity_types: tuple[str, ...] = _FINDBYCOMM_ORDER
    else:
        wanted = str(raw_entity).strip().upper()
        if wanted not in _FINDBYCOMM_ORDER:
            raise crm_error(f"Entity type '{raw_entity}' is not supported in current context")
        entity_types = (wanted,)

    crm = ctx.portal.crm
    found: dict[str, set[int]] = {}
    for value in values:
        hits = crm.find_by_phone(value) if comm_type == "PHONE" else crm.find_by_email(value)
        for etype, entity_id in hits:
            found.setdefault(etype, set()).add(entity_id)
    result: dict[str, list[int]] = {}
    for etype in entity_types:
        ids = sorted(found.get(etype, ()))[:_FINDBYCOMM_LIMIT]
        if ids:
            result[etype] = ids
        if len(ids) >= _FINDBYCOMM_LIMIT:
            break
    # Nothing found is an empty JSON array, not an empty object (§9 fact 9).
    return result if result else []


@method("crm.activity.list", scope="crm")
def activity_list(ctx: CallContext, params: dict[str, Any]) -> ListResult | list[dict[str, Any]]:
    """Activities (the call activities ``finish`` creates), with the CRM list semantics."""
    conditions = _array_param(params, "filter", "Parameter 'filter' must be array")
    order = _array_param(params, "order", "Parameter 'order' must be array")
    page = ctx.portal.crm.query_activities(
        conditions=conditions,
        order=parse_order(order),
        select=_select(params),
        start=_param(params, "start"),
    )
    return list_result(page)


@method("crm.activity.get", scope="crm")
def activity_get(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """One activity with its communications."""
    record = ctx.portal.crm.activity(_entity_id(params))
    if record is None:
        raise crm_error("Not found")
    return record
