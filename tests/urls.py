from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.views import serve
from django.urls import include, path, re_path

from tests.testapp import views

urlpatterns = [
    path("", views.home, name="home"),
    path("other/", views.other, name="other"),
    path("export/", views.start_export, name="start_export"),
    path("export/htmx/", views.start_export_htmx, name="start_export_htmx"),
    path("legacy/", views.legacy, name="legacy"),
    path("login/", auth_views.LoginView.as_view(template_name="testapp/login.html"), name="login"),
    path("async_downloads/", include("async_downloads.urls")),
    path("admin/", admin.site.urls),
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]
