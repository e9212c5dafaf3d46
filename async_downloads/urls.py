from django.urls import path

from . import stream, views

app_name = "async_downloads"

urlpatterns = [
    path("", views.centre, name="centre"),
    path("events/", stream.events, name="events"),
    path("events/held/", stream.held, name="held_events"),
    path("clear/<str:download_key>/", views.clear, name="clear"),
    path("cancel/<str:download_key>/", views.cancel, name="cancel"),
    path("retry/<str:download_key>/", views.retry, name="retry"),
    path("download/<str:download_key>/", views.download, name="download"),
    path("ajax_update/", views.ajax_update, name="ajax_update"),
    path("ajax_clear_download/", views.ajax_clear_download, name="ajax_clear_download"),
]
