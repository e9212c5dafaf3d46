import datetime

from django import forms
from django.utils import timezone

from .models import Order


class OrderFilterForm(forms.Form):
    """The filter of the orders page, applied the same way to the page and to its CSV export."""

    status = forms.ChoiceField(choices=[("", "Any status"), *Order.Status.choices], required=False)
    customer = forms.CharField(label="Customer name contains", max_length=100, required=False)
    created_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    created_to = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        start, end = data.get("created_from"), data.get("created_to")
        if start and end and start > end:
            raise forms.ValidationError("“From” must not be after “To”.")
        return data

    def filter(self, queryset):
        """``queryset`` narrowed to what the (valid) form asks for."""
        data = self.cleaned_data
        if data["status"]:
            queryset = queryset.filter(status=data["status"])
        if data["customer"]:
            queryset = queryset.filter(customer__name__icontains=data["customer"])
        if data["created_from"]:
            queryset = queryset.filter(created__gte=start_of(data["created_from"]))
        if data["created_to"]:
            queryset = queryset.filter(created__lt=start_of(data["created_to"] + datetime.timedelta(days=1)))
        return queryset

    def params(self):
        """The filter as plain strings: what a Celery task receives (and a query string carries)."""
        return {name: str(value) for name, value in self.cleaned_data.items() if value}

    def describe(self):
        """A few words for the download's name, e.g. ``delivered, customer ~ smith``."""
        data = self.cleaned_data
        words = []
        if data["status"]:
            words.append(data["status"])
        if data["customer"]:
            words.append(f"customer ~ {data['customer']}")
        if data["created_from"] or data["created_to"]:
            words.append(f"{data['created_from'] or '…'} to {data['created_to'] or '…'}")
        return ", ".join(words)


def start_of(day):
    """Midnight at the start of ``day`` in the current time zone (a range the index can use)."""
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time()))
