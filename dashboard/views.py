"""Server-rendered pages. Views only read through the apps' selectors and write through
their services; live parts of a page poll the REST API from the browser."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from dashboard import selectors as dash_selectors
from embedhub.core.errors import ApplicationError
from embedhub.jobs import selectors as job_selectors
from embedhub.jobs import services as job_services
from embedhub.jobs.models import Job

PAGE_SIZE = 50


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback


# ------------------------------------------------------------------ overview


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    jobs = job_selectors.job_list(user=request.user)
    context = {
        "section": "overview",
        "corpora": _corpus_list(request.user)[:6],
        "corpus_count": _corpus_list(request.user).count(),
        "versions": _version_list(request.user)[:8],
        "running_jobs": jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])[:10],
        "recent_jobs": jobs[:10],
        "job_count": jobs.count(),
    }
    return render(request, "dashboard/overview.html", context)


@login_required
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Worker and queue health, fetched by the overview after it renders (the ping waits)."""
    return JsonResponse(dash_selectors.system_health(timeout=0.5))


# ------------------------------------------------------------------ jobs


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    filters = {}
    chosen = {key: request.GET.get(key, "") for key in ("kind", "status", "corpus")}
    if chosen["kind"] in Job.Kind.values:
        filters["kind"] = chosen["kind"]
    if chosen["status"] in Job.Status.values:
        filters["status"] = chosen["status"]
    if chosen["corpus"].isdigit():
        filters["corpus_id"] = int(chosen["corpus"])
    jobs = job_selectors.job_list(user=request.user, filters=filters)
    page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "section": "jobs",
        "page": page,
        "chosen": chosen,
        "kinds": Job.Kind.choices,
        "statuses": Job.Status.choices,
        "corpora": _corpus_list(request.user),
        "filtered": bool(filters),
        "query": query.urlencode(),
    }
    return render(request, "dashboard/job_list.html", context)


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_selectors.job_get(user=request.user, job_id=job_id)
    context = {"section": "jobs", "job": job, "events": job.events.all()[:500]}
    return render(request, "dashboard/job_detail.html", context)


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_selectors.job_get(user=request.user, job_id=job_id)
    try:
        job_services.job_cancel(job=job)
        messages.success(request, f"Cancel requested for job {job.pk}.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("dashboard:job-detail", job_id=job.pk)


@login_required
@require_POST
def job_retry(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_selectors.job_get(user=request.user, job_id=job_id)
    try:
        job_services.job_retry(job=job)
        messages.success(request, f"Job {job.pk} is queued again; it resumes from its checkpoint.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("dashboard:job-detail", job_id=job.pk)


def _form_params(post) -> dict:
    """Form fields -> job params. Numbers and booleans are typed here because HTML forms only
    send strings; validating them is the kind's preparer's job."""
    params: dict = {}
    for key, value in post.items():
        if key in {"csrfmiddlewaretoken", "kind", "next"} or value == "":
            continue
        if value.isdigit():
            params[key] = int(value)
        elif value in {"true", "false"}:
            params[key] = value == "true"
        else:
            params[key] = value
    return params


@login_required
@require_POST
def job_start(request: HttpRequest) -> HttpResponse:
    from embedhub.jobs.submission import job_submit_checked

    kind = request.POST.get("kind", "")
    back = _safe_next(request, reverse("dashboard:overview"))
    if kind not in Job.Kind.values:
        messages.error(
            request, f"Unknown job kind {kind!r}; choose one of {', '.join(Job.Kind.values)}."
        )
        return redirect(back)
    try:
        job, _ = job_submit_checked(user=request.user, kind=kind, params=_form_params(request.POST))
    except ApplicationError as exc:
        messages.error(request, f"Could not start the {kind} job: {exc.message}")
        return redirect(back)
    return redirect("dashboard:job-detail", job_id=job.pk)


# ------------------------------------------------------------------ corpora


@login_required
@require_GET
def corpus_list(request: HttpRequest) -> HttpResponse:
    corpora = _corpus_list(request.user)
    context = {"section": "corpora", "corpora": corpora}
    return render(request, "dashboard/corpus_list.html", context)


@login_required
@require_GET
def corpus_upload(request: HttpRequest) -> HttpResponse:
    context = {"section": "corpora", "corpora": _corpus_list(request.user)}
    return render(request, "dashboard/corpus_upload.html", context)


@login_required
@require_GET
def corpus_detail(request: HttpRequest, corpus_id: int) -> HttpResponse:
    from embedhub.vectors import selectors as vector_selectors

    corpus = _corpus_get(request.user, corpus_id)
    indexes = vector_selectors.index_list(user=request.user, filters={"corpus": corpus})
    jobs = job_selectors.job_list(user=request.user, filters={"corpus": corpus})
    context = {
        "section": "corpora",
        "corpus": corpus,
        "document_count": vector_selectors.corpus_document_count(corpus_id=corpus.pk),
        "indexes": indexes.order_by("-created_at"),
        "ready_indexes": indexes.filter(state__in=["ready", "retired"]),
        "query_sets": _query_sets(request.user, corpus),
        "eval_runs": _eval_runs(request.user, {"index__corpus": corpus})[:20],
        "jobs": jobs[:10],
        "versions": _version_list(request.user).filter(status="ready"),
        "active_jobs": jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).exists(),
    }
    return render(request, "dashboard/corpus_detail.html", context)


@login_required
@require_POST
def index_activate(request: HttpRequest, index_id: int) -> HttpResponse:
    """Promote a newer index or roll back to a retired one: the corpus's search target moves."""
    from embedhub.vectors import selectors as vector_selectors
    from embedhub.vectors import services as vector_services

    index = vector_selectors.index_get_or_404(user=request.user, index_id=index_id)
    try:
        vector_services.index_activate(index=index)
        messages.success(
            request,
            f"Index #{index.pk} ({index.model_version}) is now the active index of {index.corpus}.",
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect(_safe_next(request, reverse("dashboard:corpus-detail", args=[index.corpus_id])))


# ------------------------------------------------------------------ models


@login_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    from embedhub.vectors import selectors as vector_selectors

    versions = list(_version_list(request.user))
    indexes = vector_selectors.index_list(user=request.user).exclude(state="dropped")
    scores = _scores_by_version(_eval_runs(request.user))
    by_version: dict[int, list] = {}
    for index in indexes.order_by("corpus__name", "-created_at"):
        by_version.setdefault(index.model_version_id, []).append(index)
    for version in versions:
        version.dash_indexes = by_version.get(version.pk, [])
        version.dash_scores = scores.get(version.pk, [])
    context = {"section": "models", "roots": _lineage(versions), "versions": versions}
    return render(request, "dashboard/model_list.html", context)


def _lineage(versions: list) -> list[dict]:
    """Versions as a forest: [{"version": v, "children": [...]}], roots first by name."""
    nodes = {v.pk: {"version": v, "children": []} for v in versions}
    roots = []
    for v in versions:
        if v.parent_id in nodes:
            nodes[v.parent_id]["children"].append(nodes[v.pk])
        else:
            roots.append(nodes[v.pk])
    return roots


def _scores_by_version(runs) -> dict[int, list]:
    """Latest nDCG@10 / Recall@100 per (version, query set, compensation)."""
    latest: dict[tuple, object] = {}
    for run in runs.order_by("created_at"):
        latest[(run.model_version_id, run.query_set_id, run.index_id, run.compensation)] = run
    grouped: dict[int, list] = {}
    for (version_id, *_), run in latest.items():
        grouped.setdefault(version_id, []).append(run)
    return grouped


# ------------------------------------------------------------------ evaluations


@login_required
@require_GET
def evaluation_list(request: HttpRequest) -> HttpResponse:
    runs = _eval_runs(request.user)
    context = {
        "section": "evaluations",
        "runs": runs[:200],
        "chart": _evaluation_chart(runs),
    }
    return render(request, "dashboard/evaluation_list.html", context)


CHART_METRICS = ("ndcg@10", "recall@100")  # names as workers.ml.metrics writes them


def _evaluation_chart(runs) -> dict:
    """Chart data: one group per (query set, model version), one bar per compensation mode,
    using each group's latest run."""
    latest: dict[tuple, object] = {}
    for run in runs.order_by("created_at"):
        key = (
            run.query_set.name,
            str(run.model_version),
            f"index #{run.index_id}",
            run.compensation,
        )
        latest[key] = run
    labels = sorted({k[:3] for k in latest})
    modes = sorted({k[3] for k in latest}, key=lambda m: (m != "none", m))
    datasets = []
    for metric in CHART_METRICS:
        for mode in modes:
            values = []
            for label in labels:
                run = latest.get((*label, mode))
                values.append(run.metrics.get(metric) if run else None)
            datasets.append({"metric": metric, "compensation": mode, "data": values})
    return {"labels": [" · ".join(label) for label in labels], "datasets": datasets}


# ------------------------------------------------------------------ audits


@login_required
@require_GET
def audit_list(request: HttpRequest) -> HttpResponse:
    context = {"section": "audits", "audits": _audits(request.user)}
    return render(request, "dashboard/audit_list.html", context)


@login_required
@require_GET
def audit_detail(request: HttpRequest, audit_id: int) -> HttpResponse:
    from django.shortcuts import get_object_or_404

    audit = get_object_or_404(_audits(request.user), pk=audit_id)
    context = {"section": "audits", "audit": audit}
    return render(request, "dashboard/audit_detail.html", context)


# ------------------------------------------------------------------ search


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    from embedhub.vectors import selectors as vector_selectors

    corpora = _corpus_list(request.user)
    indexes = vector_selectors.index_list(user=request.user).filter(state__in=["ready", "retired"])
    context = {
        "section": "search",
        "corpora": corpora.filter(active_index__isnull=False),
        "indexes": indexes.order_by("corpus__name", "-created_at"),
        "versions": _version_list(request.user).filter(status="ready"),
        "chosen_corpus": request.GET.get("corpus", ""),
    }
    return render(request, "dashboard/search.html", context)


# ------------------------------------------------------------------ cross-app reads


def _corpus_list(user):
    from embedhub.core.selectors import owned_by
    from embedhub.corpora.models import Corpus

    return owned_by(Corpus.objects.all(), user=user).select_related("active_index")


def _corpus_get(user, corpus_id: int):
    from django.shortcuts import get_object_or_404

    return get_object_or_404(_corpus_list(user), pk=corpus_id)


def _version_list(user):
    from embedhub.registry.models import ModelVersion

    return ModelVersion.objects.select_related("model", "parent")


def _query_sets(user, corpus):
    from django.db.models import Count

    from embedhub.core.selectors import owned_by
    from embedhub.evaluation.models import QuerySet

    qs = owned_by(QuerySet.objects.filter(corpus=corpus), user=user)
    return qs.annotate(
        n_queries=Count("queries", distinct=True), n_qrels=Count("qrels", distinct=True)
    )


def _eval_runs(user, filters: dict | None = None):
    from embedhub.core.selectors import owned_by
    from embedhub.evaluation.models import EvalRun

    qs = owned_by(EvalRun.objects.all(), user=user).select_related(
        "query_set", "index", "index__corpus", "index__model_version__model", "model_version__model"
    )
    return qs.filter(**(filters or {}))


def _audits(user):
    from embedhub.audits.models import RobustnessAudit
    from embedhub.core.selectors import owned_by

    return owned_by(RobustnessAudit.objects.all(), user=user).select_related(
        "index", "index__corpus", "model_version__model"
    )
