"""The exports of the sample site: Celery tasks that use async_downloads' public API only."""

import datetime
import logging
import time
from contextlib import contextmanager
from decimal import Decimal

from celery import shared_task
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Sum
from django.utils import timezone
from django.utils.text import slugify

from async_downloads.cache import DownloadCancelled, save_download, set_error, set_percentage, update_percentage
from async_downloads.shortcuts import queryset_export

from .forms import OrderFilterForm, start_of
from .models import Customer, Order

logger = logging.getLogger(__name__)

ORDER_HEADER = ["order", "created", "customer", "email", "sku", "product", "quantity", "unit price", "total", "status"]
TOP_CUSTOMERS = 50
SLOW_REPORT_DAYS = 30
ORDER_TOTAL = ExpressionWrapper(F("quantity") * F("unit_price"), output_field=DecimalField())


@contextmanager
def reported_errors(download_key, message="This export failed. Please try again later."):
    """An exception in the block fails the download with ``message``; the details go to the log.

    A cancel is no failure: it ends the task (``throws`` keeps it out of the log as an error).
    """
    try:
        yield
    except DownloadCancelled:
        raise
    except Exception:
        logger.exception("Export %s failed.", download_key)
        set_error(download_key, message)


def order_row(order):
    """Typed values: XLSX makes numbers, dates and decimals of them, JSON Lines ISO dates and exact decimals."""
    return [
        order.pk,
        timezone.localtime(order.created).replace(microsecond=0),
        order.customer.name,
        order.customer.email,
        order.product.sku,
        order.product.name,
        order.quantity,
        order.unit_price,
        order.total,
        order.get_status_display(),
    ]


@shared_task(throws=(DownloadCancelled,))
def export_orders(download_key, params):
    """1. The orders that the page's filter shows, through ``queryset_export``.

    CSV, XLSX or JSON Lines: the view chose the format, and the file name it gave
    the download says which (``init_generic_export``).
    """
    form = OrderFilterForm(params)
    if not form.is_valid():
        set_error(download_key, "The filter of this export is not valid.")
        return
    orders = form.filter(Order.objects.select_related("customer", "product")).order_by("pk")
    queryset_export(download_key, ORDER_HEADER, orders, order_row)


@shared_task(throws=(DownloadCancelled,))
def export_top_customers(download_key, member_format="csv"):
    """2. A zip with one file of orders per top customer (CSV or XLSX), saved with ``members=``.

    Each member is written into the zip before the next customer's orders are read.
    """
    with reported_errors(download_key):
        customers = top_customers()

        def members():
            for rank, customer in enumerate(customers):
                update_percentage(download_key, len(customers), rank, resolution=len(customers))
                yield f"{rank + 1:02d}-{slugify(customer.name)}.{member_format}", customer_orders(customer)

        save_download(download_key, members=members())


def top_customers():
    spent = Sum(F("orders__quantity") * F("orders__unit_price"), output_field=DecimalField())
    return list(Customer.objects.annotate(spent=spent).order_by("-spent")[:TOP_CUSTOMERS])


def customer_orders(customer):
    """The header and a row per order of ``customer``, oldest first, read as they are written."""
    yield ORDER_HEADER
    orders = customer.orders.select_related("customer", "product").order_by("created")
    for order in orders.iterator():
        yield order_row(order)


@shared_task(throws=(DownloadCancelled,))
def daily_revenue_report(download_key):
    """3. A slow job (about 30 s): one day of revenue per second, with smooth progress."""
    with reported_errors(download_key):
        latest = Order.objects.order_by("-created").values_list("created", flat=True).first()
        last_day = timezone.localdate(latest) if latest else timezone.localdate()
        rows = [["day", "orders", "items", "revenue"]]
        for step in range(SLOW_REPORT_DAYS):
            started = time.monotonic()
            rows.append(revenue_of(last_day - datetime.timedelta(days=SLOW_REPORT_DAYS - 1 - step)))
            # The query takes milliseconds; pretend each day is hard work.
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            set_percentage(download_key, min((step + 1) * 100 // SLOW_REPORT_DAYS, 99))
        save_download(download_key, rows)


def revenue_of(day):
    orders = Order.objects.filter(
        created__gte=start_of(day),
        created__lt=start_of(day + datetime.timedelta(days=1)),
        status__in=[Order.Status.PAID, Order.Status.SHIPPED, Order.Status.DELIVERED],
    )
    totals = orders.aggregate(orders=Count("pk"), items=Sum("quantity"), revenue=Sum(ORDER_TOTAL))
    revenue = Decimal(totals["revenue"] or 0).quantize(Decimal("0.01"))
    return [day.isoformat(), totals["orders"], totals["items"] or 0, revenue]


class WarehouseUnavailable(ConnectionError):
    pass


@shared_task(throws=(DownloadCancelled,))
def stock_levels(download_key):
    """4. A job that fails halfway: the details go to the log, a clean message to the user."""
    message = "The warehouse did not answer, so stock levels could not be exported. Please try again later."
    with reported_errors(download_key, message):
        for step in range(10):
            time.sleep(0.5)
            set_percentage(download_key, (step + 1) * 5)
        raise WarehouseUnavailable("warehouse-api.internal:8443 timed out after 30 s (GET /v2/stock)")
