"""Price versions: the rules for adding one, shared by deployments (DeploymentPrice) and router
providers (keys.models.RouterProviderPrice).

Past versions are never edited and a version cannot start in the past, so usage already made keeps
the price it was made at; one currency per priced thing, so bills add up; setting the price already
in force adds nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction

from console.audit import Actor

CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
PRICE_MAX = Decimal("999999.999999")
# A price version may start "now"; a form submitted a moment later must not count as backdating.
BACKDATE_TOLERANCE = timedelta(minutes=2)


def clean_price(value, field: str) -> Decimal:
    try:
        price = Decimal(value)
    except (InvalidOperation, TypeError):
        raise ValidationError({field: "Enter a number."}) from None
    if not price.is_finite() or price < 0 or price > PRICE_MAX:
        raise ValidationError({field: f"Enter a price between 0 and {PRICE_MAX}."})
    if price.as_tuple().exponent < -6:
        raise ValidationError({field: "At most 6 decimal places."})
    return price


def clean_currency(currency: str) -> str:
    currency = (currency or "").strip().upper()
    if not CURRENCY_RE.match(currency):
        raise ValidationError({"currency": "Use a three-letter currency code such as USD."})
    return currency


def clean_effective_from(effective_from: datetime | None, now: datetime) -> datetime:
    effective_from = effective_from or now
    if effective_from < now - BACKDATE_TOLERANCE:
        raise ValidationError({"effective_from": "A price change cannot start in the past; past usage keeps its price."})
    return effective_from


@dataclass(frozen=True)
class PriceChange:
    price: models.Model  # the version in force from effective_from: the new one, or the unchanged current one
    previous: models.Model | None  # the version in force at effective_from before this change
    added: bool


def price_version_add(
    versions: models.QuerySet,
    *,
    priced_as: models.QuerySet,
    what: str,
    actor: Actor,
    effective_from: datetime,
    input_price: Decimal,
    output_price: Decimal,
    currency: str,
    **identity,
) -> PriceChange:
    """Add a version to `versions` (one thing's price history: `identity` names that thing for the
    new row) unless the same price is already in force. `priced_as` is every version whose currency
    must match (`what`, e.g. "deployment", names it in the error). The caller holds a row lock on
    the priced thing, so concurrent changes are ordered."""
    current = versions.filter(effective_from__lte=effective_from).order_by("-effective_from").first()
    later = versions.filter(effective_from__gt=effective_from).exists()
    same = current is not None and (current.input_per_million, current.output_per_million, current.currency) == (
        input_price,
        output_price,
        currency,
    )
    if same and not later:
        return PriceChange(price=current, previous=current, added=False)
    currencies = set(priced_as.values_list("currency", flat=True))
    if currencies and currencies != {currency}:
        raise ValidationError({"currency": f"This {what} is priced in {', '.join(sorted(currencies))}; keep one currency so bills add up."})
    try:
        with transaction.atomic():
            price = versions.model.objects.create(
                **identity,
                effective_from=effective_from,
                input_per_million=input_price,
                output_per_million=output_price,
                currency=currency,
                created_by=actor.user if getattr(actor.user, "pk", None) else None,
            )
    except IntegrityError:
        raise ValidationError({"effective_from": "A price version already starts at this moment."}) from None
    return PriceChange(price=price, previous=current, added=True)
