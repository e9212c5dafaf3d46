from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST
from django_htmx.http import trigger_client_event

from async_downloads.shortcuts import init_generic_csv_download
from tests.testapp.tasks import slow_export


@login_required
def home(request):
    return render(request, "testapp/home.html", {"boost": bool(request.GET.get("boost"))})


@login_required
def other(request):
    return render(request, "testapp/other.html", {"boost": bool(request.GET.get("boost"))})


@login_required
@require_POST
def start_export(request):
    init_generic_csv_download(slow_export, request.user, "Squares", rows=int(request.POST.get("rows", 40)))
    return redirect("home")


@login_required
@require_POST
def start_export_htmx(request):
    """The same export started with hx-post: no page load, the centre is told instead."""
    init_generic_csv_download(slow_export, request.user, "Squares", rows=int(request.POST.get("rows", 40)))
    return trigger_client_event(HttpResponse(status=204), "async-downloads:started")


@login_required
@ensure_csrf_cookie
def legacy(request):
    """A page of a site still on 0.5's jQuery polling script: no {% async_downloads_head %}."""
    return render(request, "testapp/legacy.html", {"tag": bool(request.GET.get("tag"))})
