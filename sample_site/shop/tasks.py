"""The exports of the sample site: Celery tasks that use async_downloads' public API only."""

import csv
import datetime
import io
import logging
import tempfile
import time
import zipfile
from contextlib import contextmanager
from decimal import Decimal

from celery import shared_task
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Sum
from django.utils import timezone
from django.utils.text import slugify

from async_downloads.cache import DownloadCancelled, save_download, set_error, set_percentage, update_percentage
from async_downloads.shortcuts import queryset_to_csv

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
    return [
        order.pk,
        order.created.isoformat(timespec="seconds"),
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
    """1. The orders that the page's filter shows, as CSV, through ``queryset_to_csv``."""
    form = OrderFilterForm(params)
    if not form.is_valid():
        set_error(download_key, "The filter of this export is not valid.")
        return
    orders = form.filter(Order.objects.select_related("customer", "product")).order_by("pk")
    queryset_to_csv(download_key, ORDER_HEADER, orders, order_row)


@shared_task(throws=(DownloadCancelled,))
def export_top_customers(download_key):
    """2. A zip with one CSV of orders per top customer, built here and saved with ``file=``."""
    with reported_errors(download_key), tempfile.TemporaryFile() as archive:
        customers = top_customers()
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zip_file:
            for rank, customer in enumerate(customers):
                name = f"{rank + 1:02d}-{slugify(customer.name)}.csv"
                zip_file.writestr(name, customer_orders_csv(customer))
                update_percentage(download_key, len(customers), rank, resolution=len(customers))
        save_download(download_key, file=archive)


def top_customers():
    spent = Sum(F("orders__quantity") * F("orders__unit_price"), output_field=DecimalField())
    return list(Customer.objects.annotate(spent=spent).order_by("-spent")[:TOP_CUSTOMERS])


def customer_orders_csv(customer):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ORDER_HEADER)
    orders = customer.orders.select_related("customer", "product").order_by("created")
    writer.writerows(order_row(order) for order in orders)
    return buffer.getvalue()


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
