from django.urls import include, path

urlpatterns = [path("async_downloads/", include("async_downloads.urls"))]
