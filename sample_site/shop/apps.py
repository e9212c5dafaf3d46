from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "sample_site.shop"
    label = "shop"
    verbose_name = "Shop"
