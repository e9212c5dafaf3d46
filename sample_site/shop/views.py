from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from async_downloads.cache import TooManyDownloads
from async_downloads.shortcuts import init_generic_csv_download, init_generic_export, start_download

from . import tasks
from .forms import OrderFilterForm
from .models import Order

PREVIEW_ROWS = 15
# The formats the orders can be exported in (the form's format button): value -> label.
ORDER_FORMATS = {"csv": "CSV", "xlsx": "XLSX", "jsonl": "JSON Lines"}

# kind in the URL: (task, file name, name shown in the download centre, task keyword arguments),
# started with start_download, which keeps the task in the record: it can be cancelled and retried.
EXPORTS = {
    "top-customers": (tasks.export_top_customers, "top-50-customers.zip", "Top 50 customers (zip)", {}),
    "top-customers-xlsx": (tasks.export_top_customers, "top-50-customers-xlsx.zip", "Top 50 customers (zip of XLSX)",
                           {"member_format": "xlsx"}),
}
# kind in the URL: (task, name), started with init_generic_csv_download, which keeps the task
# in the record: these can be retried once they failed or were cancelled.
CSV_REPORTS = {
    "daily-revenue": (tasks.daily_revenue_report, "Daily revenue"),
    "stock-levels": (tasks.stock_levels, "Stock levels"),
}


@login_required
def exports(request):
    form = OrderFilterForm(request.GET or None)
    orders = Order.objects.select_related("customer", "product")
    if form.is_bound and form.is_valid():
        orders = form.filter(orders)
    context = {
        "form": form,
        "filter_valid": not form.is_bound or form.is_valid(),
        "params": form.params() if form.is_bound and form.is_valid() else {},
        "count": orders.count(),
        "preview": orders[:PREVIEW_ROWS],
        "other_formats": {value: label for value, label in ORDER_FORMATS.items() if value != "csv"},
    }
    return render(request, "shop/exports.html", context)


@login_required
@require_POST
def export_orders(request):
    form = OrderFilterForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The filter is not valid, so nothing was exported.")
        return redirect("shop:exports")
    name = f"Orders ({form.describe()})" if form.describe() else "Orders"
    file_format = request.POST.get("format", "csv")
    if file_format not in ORDER_FORMATS:
        raise Http404("No such format.")
    # The file name ends with the format's extension: the task's queryset_export writes that format.
    try:
        init_generic_export(tasks.export_orders, request.user, name, file_format, form.params())
    except TooManyDownloads as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, f"{name}: export started. Follow it under Downloads.")
    query = urlencode(form.params())
    return redirect(f"{reverse('shop:exports')}?{query}" if query else reverse("shop:exports"))


@login_required
@require_POST
def start_export(request, kind):
    try:
        name = _start(request, kind)
    except TooManyDownloads as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, f"{name}: export started. Follow it under Downloads.")
    return redirect(_next_url(request))


def _start(request, kind):
    """Start the export ``kind`` for the user; return its name."""
    if kind in CSV_REPORTS:
        task, name = CSV_REPORTS[kind]
        init_generic_csv_download(task, request.user, name)
    elif kind in EXPORTS:
        task, filename, name, kwargs = EXPORTS[kind]
        start_download(request.user, filename, task, kwargs=kwargs, name=name)
    else:
        raise Http404("No such export.")
    return name


def _next_url(request):
    url = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}):
        return url
    return reverse("shop:exports")
