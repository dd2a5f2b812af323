"""Server-rendered pages. Views only read through the apps' selectors and write through
their services; live parts of a page poll the REST API from the browser."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from dashboard import selectors as dash_selectors
from embedhub.audits import selectors as audit_selectors
from embedhub.continual import selectors as continual_selectors
from embedhub.core.errors import ApplicationError, NotFound
from embedhub.core.querystrings import query_id
from embedhub.corpora import screening as corpus_screening
from embedhub.corpora import selectors as corpus_selectors
from embedhub.evaluation import selectors as evaluation_selectors
from embedhub.jobs import selectors as job_selectors
from embedhub.jobs import services as job_services
from embedhub.jobs.models import Job
from embedhub.jobs.submission import job_submit_checked
from embedhub.registry import selectors as registry_selectors
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors import services as vector_services
from embedhub.vectors.apis import ServingPolicyApi
from embedhub.vectors.compensation import COMPENSATIONS
from workers.ml.metrics import METRICS

PAGE_SIZE = 50
# What each compensation does, for the search and evaluate forms; one the server adds later
# is still offered (under its bare name): the options come from COMPENSATIONS.
COMPENSATION_LABELS = {
    "auto": "auto (QDC if the encoder is newer)",
    "qdc": "qdc (query drift vectors, always)",
    "adapter": "adapter (the learned compensation adapters)",
    "none": "none",
}


def _compensation_choices() -> list[tuple[str, str]]:
    return [(name, COMPENSATION_LABELS.get(name, name)) for name in COMPENSATIONS]


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback


# ------------------------------------------------------------------ overview


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    jobs = job_selectors.job_list(user=request.user, filters={"parent__isnull": True})
    active = jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    versions = _version_list(request.user)
    corpora = _corpus_list(request.user)
    context = {
        "section": "overview",
        "corpora": corpora[:6],
        "corpus_count": corpora.count(),
        "versions": versions.order_by("-created_at")[:8],
        "version_count": versions.count(),
        "running_jobs": active[:10],
        "running_count": active.count(),
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
    filters: dict = {"parent__isnull": True}  # shards are listed on their job's page
    chosen = {key: request.GET.get(key, "") for key in ("kind", "status", "corpus")}
    if chosen["kind"] in Job.Kind.values:
        filters["kind"] = chosen["kind"]
    if chosen["status"] in Job.Status.values:
        filters["status"] = chosen["status"]
    corpus_id = query_id(chosen["corpus"])
    if corpus_id is not None:
        filters["corpus_id"] = corpus_id
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
        "filtered": any(chosen.values()),
        "query": query.urlencode(),
    }
    return render(request, "dashboard/job_list.html", context)


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_selectors.job_get(user=request.user, job_id=job_id)
    context = {
        "section": "jobs",
        "job": job,
        "events": job.events.all()[:500],
        "shards": job.shards.order_by("pk"),
        "loss_curve": _finetune_loss_curve(job, request.user),
    }
    return render(request, "dashboard/job_detail.html", context)


def _finetune_loss_curve(job: Job, user) -> list:
    """A finished fine-tune's full curve lives on the version it registered."""
    version_id = (job.result or {}).get("model_version") if job.kind == Job.Kind.FINETUNE else None
    if not version_id:
        return []
    try:
        version = registry_selectors.model_version_get(user=user, version_id=version_id)
        return version.loss_curve or []
    except NotFound:
        return []


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


JOB_FORM_SESSION_KEY = "job_form"
_NOT_PARAMS = {"csrfmiddlewaretoken", "kind", "next"}


def _form_values(post) -> dict[str, str]:
    """The job's fields as posted, flat ("config.epochs": "3"): what a failed form refills."""
    return {key: value for key, value in post.items() if key not in _NOT_PARAMS}


def _form_params(values: dict[str, str]) -> dict:
    """Flat form fields -> nested params: "config.epochs" -> {"config": {"epochs": "3"}}.

    Values stay strings: the kind's Params serializer types them (from_form=True), so a form
    and the JSON API accept and refuse the same things. An empty field is left out, so the
    kind's default applies, as when an API client omits the key."""
    params: dict = {}
    for key, value in values.items():
        if value == "":
            continue
        target = params
        *parents, leaf = key.split(".")
        for parent in parents:
            if not isinstance(target.get(parent), dict):  # "gate" and "gate.x" both posted
                target[parent] = {}
            target = target[parent]
        target[leaf] = value
    return params


def _form_field(path: str) -> str:
    """An error's params path as the form names its input: "params.config.lr" -> "config.lr";
    "" for the params as a whole."""
    return "" if path == "params" else path.removeprefix("params.")


def _form_errors(exc: ApplicationError) -> dict[str, list[str]]:
    """The messages of a refused submission by form field ("" = no field: shown atop the
    form). A serializer error lists every field; a service's refusal names at most one."""
    details = exc.details if isinstance(exc.details, dict) else {}
    fields = details.get("fields")
    if not fields:
        path = details.get("field") or ""
        fields = {path: [exc.message.removeprefix(f"{path}: ") if path else exc.message]}
    errors: dict[str, list[str]] = {}
    for path, texts in fields.items():
        errors.setdefault(_form_field(path), []).extend(str(text) for text in texts)
    return errors


def _job_form_pop(request: HttpRequest) -> dict | None:
    """The submission that just failed on this page, once (a reload shows a clean form); an
    entry left by another page is dropped rather than shown on the wrong form."""
    entry = request.session.pop(JOB_FORM_SESSION_KEY, None)
    return entry if entry and entry.get("page") == request.get_full_path() else None


@login_required
@require_POST
def job_start(request: HttpRequest) -> HttpResponse:
    kind = request.POST.get("kind", "")
    back = _safe_next(request, reverse("dashboard:overview"))
    if kind not in Job.Kind.values:
        messages.error(
            request, f"Unknown job kind {kind!r}; choose one of {', '.join(Job.Kind.values)}."
        )
        return redirect(back)
    values = _form_values(request.POST)
    try:
        job, _ = job_submit_checked(
            user=request.user, kind=kind, params=_form_params(values), from_form=True
        )
    except ApplicationError as exc:
        messages.error(request, f"Could not start the {kind} job: {exc.message}")
        # Kept for one redirect, so the page shows each message under its field, refilled.
        request.session[JOB_FORM_SESSION_KEY] = {
            "kind": kind,
            "page": back,
            "errors": _form_errors(exc),
            "values": values,
        }
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
    corpus = _corpus_get(request.user, corpus_id)
    indexes = vector_selectors.index_list(user=request.user, filters={"corpus": corpus})
    jobs = job_selectors.job_list(user=request.user, filters={"corpus": corpus})
    context = {
        "section": "corpora",
        "corpus": corpus,
        "document_count": corpus.document_count,
        "indexes": indexes.order_by("-created_at"),
        "ready_indexes": indexes.filter(state__in=["ready", "retired"]),
        "query_sets": _query_sets(request.user, corpus),
        # The evaluate form starts on the set a policy job would measure (never "train").
        "measured_query_set": getattr(
            continual_selectors.policy_query_set(corpus=corpus), "pk", None
        ),
        "eval_runs": _eval_runs(request.user, {"index__corpus": corpus})[:20],
        "jobs": jobs[:10],
        "versions": _version_list(request.user).filter(status="ready"),
        "default_version": _default_version(),
        "active_jobs": jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).exists(),
        "job_form": _job_form_pop(request),
        "compensations": _compensation_choices(),
        **_serving_context(corpus),
    }
    return render(request, "dashboard/corpus_detail.html", context)


def _serving_context(corpus) -> dict:
    """The corpus's serving policy: what answers its queries now, and the candidates of the
    last decision with their numbers (bars scaled to the best one)."""
    policy = vector_selectors.serving_policy_of(corpus=corpus)
    serving = vector_selectors.serving_resolve(corpus=corpus) if corpus.active_index_id else None
    candidates = list((policy.decision or {}).get("candidates", [])) if policy else []
    best = max((c.get("metric") or 0 for c in candidates), default=0) or 1
    for candidate in candidates:
        candidate["bar"] = round(100 * (candidate.get("metric") or 0) / best)
    return {
        "policy": policy,
        "serving": serving,
        "policy_candidates": candidates,
        # The form shows the model's defaults until the corpus has a policy row.
        "policy_settings": vector_selectors.serving_policy_settings(corpus=corpus),
        "policy_metrics": METRICS,
    }


@login_required
@require_POST
def corpus_policy_settings(request: HttpRequest, corpus_id: int) -> HttpResponse:
    """The settings policy jobs and evaluations of the corpus follow, checked by the same
    serializer as the API's PATCH. The form sends every setting: an unticked box is false."""
    corpus = _corpus_get(request.user, corpus_id)
    data = ServingPolicyApi.UpdateSerializer(
        data={
            "metric": request.POST.get("metric", ""),
            "tolerance": request.POST.get("tolerance", ""),
            "allow_reindex": request.POST.get("allow_reindex") == "on",
            "exclude_self": request.POST.get("exclude_self") == "on",
        },
        # A form's values are strings: the strict fields may parse them ("0.01").
        context={"from_form": True},
    )
    if data.is_valid():
        vector_services.serving_policy_settings_update(corpus=corpus, **data.validated_data)
        messages.success(request, "Policy settings saved.")
    else:
        for field, errors in data.errors.items():
            messages.error(request, f"{field}: {' '.join(str(e) for e in errors)}")
    target = reverse("dashboard:corpus-detail", args=[corpus.pk]) + "#serving-policy"
    return redirect(target)


@login_required
@require_POST
def index_activate(request: HttpRequest, index_id: int) -> HttpResponse:
    """Promote a newer index or roll back to a retired one: the corpus's search target moves."""
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


# ------------------------------------------------------------------ quarantine


@login_required
@require_GET
def corpus_quarantine(request: HttpRequest, corpus_id: int) -> HttpResponse:
    """Documents the ingest screen held back, with their scores, to approve or reject."""
    corpus = _corpus_get(request.user, corpus_id)
    documents = list(corpus_selectors.quarantine_list(corpus=corpus)[:500])
    for document in documents:  # the features, without which-index bookkeeping
        document.dash_features = corpus_screening.screen_features_shown(document.screen_features)
    context = {
        "section": "corpora",
        "corpus": corpus,
        "screen": corpus_selectors.corpus_screen_get(corpus=corpus),
        "documents": documents,
        "decisions": corpus_selectors.quarantine_decisions(corpus=corpus)[:100],
    }
    return render(request, "dashboard/corpus_quarantine.html", context)


@login_required
@require_POST
def quarantine_decide(request: HttpRequest, corpus_id: int, document_id: int) -> HttpResponse:
    corpus = _corpus_get(request.user, corpus_id)
    document = _or_404(
        corpus_selectors.quarantined_document_get, corpus=corpus, document_id=document_id
    )
    action = request.POST.get("action")
    if action == "approve":
        corpus_screening.document_quarantine_approve(document=document, user=request.user)
        messages.success(request, f"Approved {document.external_id}: it is searchable now.")
    elif action == "reject":
        corpus_screening.document_quarantine_reject(document=document, user=request.user)
        messages.success(request, f"Rejected {document.external_id}: deleted, and recorded.")
    else:
        messages.error(request, "Choose approve or reject.")
    return redirect("dashboard:corpus-quarantine", corpus_id=corpus.pk)


@login_required
@require_POST
def corpus_screening_settings(request: HttpRequest, corpus_id: int) -> HttpResponse:
    corpus = _corpus_get(request.user, corpus_id)
    try:
        fpr = float(request.POST.get("fpr") or corpus.screening_fpr)
    except ValueError:
        fpr = -1.0
    if not 0.001 <= fpr <= 0.5:
        messages.error(request, "The false-positive rate must be a number from 0.001 to 0.5.")
        return redirect("dashboard:corpus-quarantine", corpus_id=corpus.pk)
    enabled = request.POST.get("enabled") == "on"
    corpus = corpus_screening.corpus_screening_update(corpus=corpus, enabled=enabled, fpr=fpr)
    refit = enabled and request.POST.get("refit") == "on"
    if refit and corpus_screening.corpus_screen_fit(corpus=corpus) is None:
        messages.error(request, "Too few clean documents to calibrate a screen on yet.")
    state = f"on at {fpr:.1%} false positives" if enabled else "off"
    messages.success(request, f"Screening is {state}.")
    return redirect("dashboard:corpus-quarantine", corpus_id=corpus.pk)


# ------------------------------------------------------------------ models


@login_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    versions = list(_version_list(request.user))
    indexes = vector_selectors.index_list(user=request.user).exclude(state="dropped")
    scores = _scores_by_version(_eval_runs(request.user))
    by_version: dict[int, list] = {}
    for index in indexes.order_by("corpus__name", "-created_at"):
        by_version.setdefault(index.model_version_id, []).append(index)
    # A gate speaks for one corpus: each version lists its verdicts on the user's corpora.
    gates: dict[int, list] = {}
    for gate in continual_selectors.gate_result_list(user=request.user).order_by("corpus__name"):
        gates.setdefault(gate.model_version_id, []).append(gate)
    for version in versions:
        version.dash_indexes = by_version.get(version.pk, [])
        version.dash_scores = scores.get(version.pk, [])
        version.dash_gates = gates.get(version.pk, [])
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
    labels = {v.pk: f"{v.model.name} v{v.version}" for v in _version_list(request.user)}
    context = {
        "section": "evaluations",
        "runs": runs[:200],
        "charts": _evaluation_charts(
            evaluation_selectors.eval_run_table(user=request.user), labels
        ),
    }
    return render(request, "dashboard/evaluation_list.html", context)


def _evaluation_charts(rows: list[dict], version_labels: dict[int, str]) -> list[dict]:
    """One chart per corpus × query set (query sets of different corpora share names such
    as "test", and their numbers are not comparable), oldest group first."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["corpus_name"], row["query_set_name"], row["query_set"]), []).append(
            row
        )
    return [
        {
            "id": f"qs-{query_set}",
            "corpus": corpus,
            "query_set": name,
            **_evaluation_chart(group, version_labels),
        }
        for (corpus, name, query_set), group in groups.items()
    ]


CHART_METRICS = ("ndcg@10", "recall@100")  # names as workers.ml.metrics writes them


def _evaluation_chart(rows: list[dict], version_labels: dict[int, str]) -> dict:
    """Grouped bars for the runs of one query set: x = query encoder (and the index's
    version when it differs, which is where compensation matters), one series per
    compensation, so "none" and "qdc" stand side by side. Each bar is the latest run of its
    kind."""
    latest: dict[tuple, dict] = {}
    for row in rows:  # oldest first, so later runs overwrite earlier ones
        x = version_labels.get(row["model_version"], row["model_version_label"])
        if row["index_model_version"] != row["model_version"]:
            x += f" → index of {version_labels.get(row['index_model_version'], '?')}"
        if row["mode"] != "exact":
            x += f" ({row['mode']})"
        latest[(x, row["query_set_name"], row["compensation"])] = row
    xs = list(dict.fromkeys(key[0] for key in latest))
    series = sorted({key[1:] for key in latest}, key=lambda s: (s[0], s[1] != "none", s[1]))
    datasets = [
        {
            "metric": metric,
            "label": compensation,
            "compensation": compensation,
            "data": [(latest.get((x, query_set, compensation)) or {}).get(metric) for x in xs],
        }
        for metric in CHART_METRICS
        for query_set, compensation in series
    ]
    return {"labels": xs, "datasets": datasets}


# ------------------------------------------------------------------ the forgetting matrix


@login_required
@require_GET
def forgetting_matrix(request: HttpRequest) -> HttpResponse:
    """A lineage v0 → … → leaf: each task's metric for each version × serving option, read
    from the user's EvalRuns, the cells a policy job chose marked."""
    versions = _version_list(request.user)
    children = versions.filter(parent__isnull=False).order_by("-created_at", "-pk")
    chosen = request.GET.get("version", "")
    # A version that is not an id ("²") is one not found, like an id the user may not see.
    leaf = versions.filter(pk=query_id(chosen)).first() if chosen else children.first()
    if chosen and leaf is None:
        raise Http404(f"model version {chosen} not found")
    metric = request.GET.get("metric", "ndcg@10")
    if metric not in CHART_METRICS + ("recall@10", "mrr@10", "map@100"):
        metric = "ndcg@10"
    matrix = continual_selectors.forgetting_matrix(user=request.user, leaf=leaf) if leaf else None
    rows = []
    if matrix and matrix["tasks"]:
        sources = continual_selectors.version_training_sources(
            user=request.user, versions=matrix["chain"]
        )
        rows = _matrix_rows(matrix=matrix, metric=metric, sources=sources)
    context = {
        "section": "evaluations",
        "leaves": children,
        "leaf": leaf,
        "metric": metric,
        "metrics": ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"),
        "matrix": matrix,
        "rows": rows,
        "shade_full": SHADE_FULL,
        "shade_none": SHADE_NONE,
    }
    return render(request, "dashboard/forgetting.html", context)


# A change of this much in the metric (0.05 nDCG@10 = 5 points) shades a cell fully.
SHADE_FULL = 0.05
SHADE_NONE = 0.002  # smaller changes are noise on a few hundred queries: left unshaded


def _matrix_rows(*, matrix: dict, metric: str, sources: dict) -> list[dict]:
    """The matrix's rows as the page draws them: each cell's change from the root's own
    score on its task, shaded green or red by size, and the task the version trained on."""
    root_row = matrix["rows"][0]
    before = [cell["metrics"].get(metric) for cell in root_row["cells"]]
    rows = []
    for row in matrix["rows"]:
        source = sources.get(row["version"].pk, {})
        cells = []
        for cell, task, base in zip(row["cells"], matrix["tasks"], before, strict=True):
            value = cell["metrics"].get(metric)
            known = row is not root_row and value is not None and base is not None
            delta = value - base if known else None
            cells.append(
                {
                    **cell,
                    "value": value,
                    "delta": "" if delta is None else f"{delta:+.4f}",
                    "shade": _shade(delta),
                    "trained": source.get("corpus_id") == task.corpus_id,
                }
            )
        rows.append({**row, "cells": cells, "trained_on": source.get("label", "")})
    return rows


def _shade(delta: float | None) -> str:
    """A background for a change from the root: green up, red down, deeper when larger."""
    if delta is None or abs(delta) < SHADE_NONE:
        return ""
    alpha = 0.06 + 0.34 * min(1.0, abs(delta) / SHADE_FULL)
    rgb = "43, 138, 62" if delta > 0 else "201, 42, 42"
    return f"background: rgba({rgb}, {alpha:.2f})"


# ------------------------------------------------------------------ audits


@login_required
@require_GET
def audit_list(request: HttpRequest) -> HttpResponse:
    context = {
        "section": "audits",
        "audits": audit_selectors.audit_list(user=request.user),
        "comparison": audit_selectors.audit_comparison(user=request.user),
    }
    return render(request, "dashboard/audit_list.html", context)


@login_required
@require_GET
def audit_detail(request: HttpRequest, audit_id: int) -> HttpResponse:
    audit = _or_404(audit_selectors.audit_get, user=request.user, audit_id=audit_id)
    context = {
        "section": "audits",
        "audit": audit,
        # Only the curves go to the page's script; passages carry token ids it does not need.
        "objective_curves": [p.get("objective_curve") or [] for p in audit.passages],
    }
    return render(request, "dashboard/audit_detail.html", context)


# ------------------------------------------------------------------ search


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    corpora = _corpus_list(request.user)
    indexes = vector_selectors.index_list(user=request.user).filter(state__in=["ready", "retired"])
    context = {
        "section": "search",
        "corpora": corpora.filter(active_index__isnull=False),
        "indexes": indexes.order_by("corpus__name", "-created_at"),
        "versions": _version_list(request.user).filter(status="ready"),
        "version_labels": {
            v.pk: f"{v.model.name} v{v.version}" for v in _version_list(request.user)
        },
        "chosen_corpus": request.GET.get("corpus", ""),
        "compensations": _compensation_choices(),
    }
    return render(request, "dashboard/search.html", context)


# ------------------------------------------------------------------ cross-app reads


def _corpus_list(user):
    return corpus_selectors.corpus_list(user=user).select_related("active_index")


def _corpus_get(user, corpus_id: int):
    return _or_404(corpus_selectors.corpus_get, user=user, corpus_id=corpus_id)


def _version_list(user):
    """The versions `user` may see: shared ones, their own private ones (staff: all)."""
    return (
        registry_selectors.model_version_list(user=user)
        .select_related("parent")
        .order_by("model__name", "version")
    )


def _default_version():
    """What an embed job without a version uses (a staff setting); None until first use."""
    settings_row = registry_selectors.registry_settings_get()
    return settings_row.default_version if settings_row else None


def _query_sets(user, corpus):
    return evaluation_selectors.query_set_list(user=user, corpus_id=corpus.pk)


def _eval_runs(user, filters: dict | None = None):
    runs = evaluation_selectors.eval_run_list(user=user).select_related(
        "index__corpus", "index__model_version__model", "query_set"
    )
    if filters:  # filters the selector does not offer (e.g. by corpus) narrow its result
        runs = runs.filter(**filters)
    return runs


def _or_404(selector, **kwargs):
    """The apps' selectors raise the API's NotFound; a page answers with Django's 404."""
    try:
        return selector(**kwargs)
    except NotFound as exc:
        raise Http404(exc.message) from None
