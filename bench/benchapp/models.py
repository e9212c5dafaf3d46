from django.db import models


class Order(models.Model):
    """An order-like row: the kind of table a CSV export is made of."""

    reference = models.CharField(max_length=20)
    customer = models.CharField(max_length=100)
    quantity = models.IntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    created = models.DateTimeField()
    paid = models.BooleanField(default=False)

    def __str__(self):
        return self.reference
