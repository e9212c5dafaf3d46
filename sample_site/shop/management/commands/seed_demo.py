"""``manage.py seed_demo``: demo data big enough to watch an export (once; later runs return at once).

The number of orders is ``--orders``, by default ``SAMPLE_SITE_ORDERS`` or 300,000 (tests seed fewer).
A progress bar shows how far it is (redrawn on a terminal, a line per quarter otherwise).
"""

import contextlib
import datetime
import os
import random
import time
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.utils import timezone

from sample_site.shop.demo import DEMO_USERS
from sample_site.shop.models import Customer, Order, Product

SEED = 20261101
FIRST_NAMES = [
    "Ada", "Alan", "Alice", "Amara", "Ana", "Arjun", "Ben", "Bianca", "Carlos", "Chen", "Chloe", "Dara", "David",
    "Elena", "Emil", "Eva", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jana", "Jonas", "Kai",
    "Karin", "Leo", "Lina", "Luca", "Maya", "Mei", "Mila", "Nadia", "Noah", "Nora", "Omar", "Oscar", "Priya",
    "Quinn", "Rosa", "Sami", "Sara", "Tariq", "Tess", "Umar", "Vera", "Wen", "Yara", "Zoe"
]
LAST_NAMES = [
    "Abara", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Kowalski",
    "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Silva", "Smith", "Tanaka", "Ueda", "Varga",
    "Weber", "Xu", "Yilmaz", "Zhang", "Nakamura", "Murphy", "Lindqvist"
]
CITIES = [
    "Amsterdam", "Berlin", "Lisbon", "Lyon", "Madrid", "Milan", "Oslo", "Prague", "Vienna", "Warsaw"
]
ADJECTIVES = [
    "Classic", "Compact", "Deluxe", "Eco", "Heavy", "Light", "Mini", "Pro", "Smart", "Ultra"
]
NOUNS = [
    "Backpack", "Blender", "Desk", "Hammock", "Kettle", "Lamp", "Mug", "Notebook", "Pillow", "Speaker", "Stool",
    "Teapot", "Tent", "Towel", "Umbrella", "Watch", "Wok", "Wrench", "Yoga-mat", "Zipper-bag"
]
STATUSES = [
    (Order.Status.DELIVERED, 70),
    (Order.Status.SHIPPED, 9),
    (Order.Status.PAID, 8),
    (Order.Status.PENDING, 5),
    (Order.Status.CANCELLED, 5),
    (Order.Status.REFUNDED, 3),
]
BATCH = 5000
DAYS = 730
ORDER_FIELDS = ("customer", "product", "quantity", "unit_price", "status", "created")
BAR_WIDTH = 20


class Progress:
    """``Seeding orders [########------------]  40% 120,000/300,000``: redrawn in place on a
    terminal, else printed at each quarter."""

    def __init__(self, stdout, label, total):
        self.stdout, self.label, self.total = stdout, label, total
        self.tty = stdout.isatty()
        self.quarter = 0

    def line(self, done):
        share = done / self.total if self.total else 1
        filled = round(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return f"{self.label} [{bar}] {int(share * 100):3d}% {done:,}/{self.total:,}"

    def show(self, done):
        if self.tty:
            self.stdout.write(f"\r{self.line(done)}", ending="\n" if done >= self.total else "")
            self.stdout.flush()
        elif done == 0 or done >= self.total or done * 4 // self.total > self.quarter:
            self.quarter = done * 4 // max(self.total, 1)
            self.stdout.write(self.line(done))


@contextlib.contextmanager
def indexes_built_after(cursor, table):
    """On SQLite, the table's indexes are dropped for the block and created again after it (in the
    same transaction): building an index once is faster than keeping it up to date row by row."""
    if connection.vendor != "sqlite":
        yield
        return
    cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s AND sql IS NOT NULL",
                   [table])
    indexes = cursor.fetchall()
    for name, _ in indexes:
        cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")
    yield
    for _, sql in indexes:
        cursor.execute(sql)


class Command(BaseCommand):
    help = "Create the demo users and ~300,000 orders (skipped when the orders are there)."

    def add_arguments(self, parser):
        parser.add_argument("--orders", type=int, default=int(os.environ.get("SAMPLE_SITE_ORDERS") or 300_000))
        parser.add_argument("--customers", type=int, default=2_000)
        parser.add_argument("--products", type=int, default=200)
        parser.add_argument("--url", help="Print the address of the site with the users.")

    def handle(self, *args, orders, customers, products, url=None, **options):
        self.create_users()
        if Order.objects.exists():
            self.stdout.write(f"Demo data: {Order.objects.count():,} orders (already seeded).")
        else:
            started = time.monotonic()
            with transaction.atomic():  # all or nothing, so an interrupted seed runs again
                self.seed(random.Random(SEED), orders, customers, products)
            self.stdout.write(f"Demo data: {orders:,} orders seeded in {time.monotonic() - started:.1f} s.")
        if url:
            self.print_users(url)

    def create_users(self):
        users = get_user_model()
        for username, password, superuser in DEMO_USERS:
            if not users.objects.filter(username=username).exists():
                create = users.objects.create_superuser if superuser else users.objects.create_user
                create(username, f"{username}@example.com", password)

    def print_users(self, url):
        users = " or ".join(f"{name} / {password}" for name, password, _ in DEMO_USERS)
        self.stdout.write(self.style.SUCCESS(f"Open {url} and sign in as {users} (user / password)."))

    def seed(self, rng, n_orders, n_customers, n_products):
        products = Product.objects.bulk_create(self.products(rng, n_products))
        customers = Customer.objects.bulk_create(self.customers(rng, n_customers))
        # A few customers order a lot, most a little: the "top 50" export has something to show.
        weights = [rng.paretovariate(1.5) for _ in customers]
        end = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        start = end - datetime.timedelta(days=DAYS)
        statuses, status_weights = zip(*STATUSES, strict=True)
        # The orders go in with one executemany per batch, the values as bulk_create would store
        # them: building 300,000 model instances took five times as long as inserting the rows.
        insert = self.insert_sql()
        # How DateTimeField stores a value on SQLite: naive, in the database's time zone (UTC here,
        # without DST, so that adding seconds to the naive start is the same), as str().
        naive_start = timezone.make_naive(start, connection.timezone)
        progress = Progress(self.stdout, "Seeding orders", n_orders)
        progress.show(0)
        with connection.cursor() as cursor, indexes_built_after(cursor, Order._meta.db_table):
            for offset in range(0, n_orders, BATCH):
                size = min(BATCH, n_orders - offset)
                buyers = rng.choices(customers, weights, k=size)
                items = rng.choices(products, k=size)
                states = rng.choices(statuses, status_weights, k=size)
                cursor.executemany(insert, [
                    (
                        buyer.pk,
                        item.pk,
                        min(int(rng.expovariate(0.5)) + 1, 20),
                        item.price,
                        str(state),
                        str(naive_start + datetime.timedelta(seconds=rng.randrange(DAYS * 86400))),
                    )
                    for buyer, item, state in zip(buyers, items, states, strict=True)
                ])
                progress.show(offset + size)

    @staticmethod
    def insert_sql():
        quote = connection.ops.quote_name
        columns = ", ".join(quote(Order._meta.get_field(name).column) for name in ORDER_FIELDS)
        values = ", ".join(["%s"] * len(ORDER_FIELDS))
        return f"INSERT INTO {quote(Order._meta.db_table)} ({columns}) VALUES ({values})"

    def products(self, rng, count):
        for number in range(1, count + 1):
            name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {number:03d}"
            price = Decimal(rng.randrange(199, 49999)) / 100
            yield Product(sku=f"SKU-{number:05d}", name=name, price=price)

    def customers(self, rng, count):
        for number in range(1, count + 1):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email = f"{first}.{last}.{number}@example.com".lower()
            yield Customer(name=f"{first} {last}", email=email, city=rng.choice(CITIES))
