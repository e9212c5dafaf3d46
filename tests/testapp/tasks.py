from celery import shared_task

from async_downloads.shortcuts import queryset_to_csv
from tests.testapp.models import Item


def item_row(item):
    return [item.pk, item.name, item.quantity, item.price]


@shared_task
def export_items(download_key, min_quantity=0):
    queryset = Item.objects.filter(quantity__gte=min_quantity).order_by("pk")
    queryset_to_csv(download_key, ["id", "name", "quantity", "price"], queryset, item_row)


@shared_task
def ping():
    return "pong"
