from django.urls import include, path

from bench.download import baseline

urlpatterns = [
    path("async_downloads/", include("async_downloads.urls")),
    path("baseline-download/<str:download_key>/", baseline),  # what the download view did before (bench/download.py)
]
