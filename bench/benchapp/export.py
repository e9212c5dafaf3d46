"""The export both benchmark variants run: the same header, queryset and row function."""

from .models import Order

HEADER = ["id", "reference", "customer", "quantity", "amount", "created", "paid"]


def order_queryset(rows):
    """The first ``rows`` orders, in primary-key order (the table holds ids 1..N)."""
    return Order.objects.filter(pk__lte=rows).order_by("pk")


def order_row(order):
    return [
        order.pk,
        order.reference,
        order.customer,
        order.quantity,
        order.amount,
        order.created.isoformat(),
        "yes" if order.paid else "no",
    ]
