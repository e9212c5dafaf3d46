from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.exports, name="exports"),
    path("export/orders/", views.export_orders, name="export_orders"),
    path("export/<slug:kind>/", views.start_export, name="start_export"),
]
