from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

urlpatterns = [
    path("", include("sample_site.shop.urls")),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("async_downloads/", include("async_downloads.urls")),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language, for the switch in base.html
    path("admin/", admin.site.urls),
    *staticfiles_urlpatterns(),  # DEBUG only
]
