from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="testapp/login.html"), name="login"),
    path("async_downloads/", include("async_downloads.urls")),
]
