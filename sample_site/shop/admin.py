from django.contrib import admin

from .models import Customer, Order, Product


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "email", "city"]
    search_fields = ["name", "email"]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price"]
    search_fields = ["sku", "name"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["pk", "created", "customer", "product", "quantity", "unit_price", "status"]
    list_filter = ["status"]
    list_select_related = ["customer", "product"]
    raw_id_fields = ["customer", "product"]
    show_full_result_count = False
