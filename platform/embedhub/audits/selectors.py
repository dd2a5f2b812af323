"""Reads for robustness audits: audits themselves, the concept's queries, reference queries
outside the concept, and the per-version comparison the dashboard charts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import re2
from django.db.models import QuerySet as DjangoQuerySet

from embedhub.audits.models import RobustnessAudit
from embedhub.core.errors import ApplicationError, NotFound
from embedhub.core.selectors import owned_by
from embedhub.evaluation.models import Query, QuerySet

HEADLINE = "appeared@10"
REFERENCES = ("gaslite", "message_only", "centroid", "non_concept")


def audit_list(*, user, filters: dict | None = None) -> DjangoQuerySet[RobustnessAudit]:
    qs = owned_by(RobustnessAudit.objects.all(), user=user).select_related(
        "index", "index__corpus", "model_version__model", "query_set", "job"
    )
    return qs.filter(**(filters or {}))


def audit_get(*, user, audit_id) -> RobustnessAudit:
    """Another user's audit is a 404, not a 403, so ids don't leak."""
    try:
        return audit_list(user=user).get(pk=int(audit_id))
    except (RobustnessAudit.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"audit {audit_id} not found") from None


def query_set_get(*, user, query_set_id) -> QuerySet:
    try:
        return owned_by(QuerySet.objects.all(), user=user).get(pk=int(query_set_id))
    except (QuerySet.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"query_set {query_set_id} not found") from None


def _dedupe(queries: list[dict]) -> list[dict]:
    # A text in both halves would let the attacker see a held-out query.
    seen: set[str] = set()
    out = []
    for q in queries:
        if q["text"] not in seen:
            seen.add(q["text"])
            out.append(q)
    return out


def _keyword_matcher(keyword: str, *, regex: bool) -> Callable[[str], bool]:
    """A case-insensitive test for `keyword` in a query text: a literal substring, or with
    `regex` an RE2 expression. RE2 matches in time linear in the text (no backtracking), so
    a pattern like (a+)+$ cannot stall the web request that resolves the concept."""
    if not regex:
        needle = keyword.casefold()
        return lambda text: needle in text.casefold()
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a user's typo is a 400, not a line in the server log
    try:
        pattern = re2.compile(keyword, options)
    except (re2.error, UnicodeEncodeError) as exc:  # RE2 reads UTF-8: no lone surrogates
        reason = exc.args[0] if exc.args else exc
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
        raise ApplicationError(
            f"{keyword!r} is not a valid RE2 regular expression ({reason}); RE2 has "
            "no backreferences or lookaround. Leave keyword_regex off to match it literally"
        ) from None
    return lambda text: pattern.search(text) is not None


def concept_queries(
    *,
    query_set: QuerySet,
    keyword: str | None = None,
    keyword_regex: bool = False,
    query_ids: list | None = None,
) -> list[dict]:
    """The concept's queries from a query set: those whose text contains `keyword` (case-
    insensitive; a literal unless `keyword_regex`, then an RE2 expression) or those named by
    external id. Returns [{"id", "text"}] in query set order."""
    rows = (
        Query.objects.filter(query_set=query_set).order_by("id").values_list("external_id", "text")
    )
    if keyword:
        matches = _keyword_matcher(keyword, regex=keyword_regex)
        return _dedupe([{"id": e, "text": t} for e, t in rows if matches(t)])
    wanted = [str(i) for i in query_ids or []]
    found = {e: t for e, t in rows.filter(external_id__in=wanted)}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ApplicationError(
            f"query_ids: {len(missing)} not in query set {query_set.pk} ({query_set.name}), "
            f"e.g. {', '.join(missing[:5])}",
            details={"missing": missing[:50]},
        )
    return _dedupe([{"id": i, "text": found[i]} for i in dict.fromkeys(wanted)])


def non_concept_queries(
    *,
    user,
    corpus_id: int,
    query_set_id: int | None,
    exclude_texts: set[str],
    limit: int,
    seed: int,
) -> tuple[list[str], str]:
    """Queries outside the concept, to show the passages do not spill over to other topics.

    The rest of the concept's own query set when it came from one; otherwise the user's
    query sets on the index's corpus. A seeded sample of at most `limit`. Returns the texts
    and a sentence saying where they came from ("" and the reason when there are none).
    """
    if query_set_id:
        rows = Query.objects.filter(query_set_id=query_set_id)
        source = f"other queries of query set {query_set_id}"
    else:
        sets = owned_by(QuerySet.objects.filter(corpus_id=corpus_id), user=user)
        rows = Query.objects.filter(query_set__in=sets)
        names = ", ".join(str(s.pk) for s in sets) or "none"
        source = f"queries of the corpus's query sets ({names})"
    texts = list(dict.fromkeys(rows.order_by("id").values_list("text", flat=True)))
    texts = [t for t in texts if t not in exclude_texts]
    if len(texts) > limit:
        picked = np.random.default_rng(seed).choice(len(texts), size=limit, replace=False)
        texts = [texts[i] for i in sorted(picked)]
    if not texts:
        return [], "no queries outside the concept: upload a query set for this corpus"
    return texts, source


def defence_headline(results: dict) -> dict:
    """The defence's headline figures for the GASLITE passages: the combined detector's
    recall at 1 % false positives and held-out appeared@10 with the screens on."""
    attack = ((results or {}).get("defence") or {}).get("attacks", {}).get("gaslite") or {}
    recall = attack.get("recall", {}).get("0.01", {}).get("combined", {}).get("recall")
    screened = attack.get("appeared@10_screened") or {}
    return {
        "gaslite_recall@1%": recall,
        "gaslite_appeared@10_screened": screened.get("combined"),
        "gaslite_appeared@10_text_screened": screened.get("text"),
    }


def audit_comparison(*, user, concept: str | None = None) -> list[dict]:
    """appeared@10 on held-out queries per (concept, model version), from the latest complete
    audit of each pair, with the message-only floor, the centroid ceiling and the spill-over
    onto non-concept queries."""
    audits = audit_list(user=user)
    if concept:
        audits = audits.filter(concept=concept)
    return audit_comparison_of(audits=audits)


def audit_comparison_of(*, audits: DjangoQuerySet[RobustnessAudit]) -> list[dict]:
    """The comparison over `audits`: the caller's own (audit_list), filtered as the API's
    ?concept= and ?index= ask."""
    qs = audits.filter(state=RobustnessAudit.State.COMPLETE)
    # Versions are compared on the same concept and corpus, plain and adaptive apart.
    latest: dict[tuple, RobustnessAudit] = {}
    for audit in qs.order_by("-created_at"):
        key = (
            audit.concept,
            audit.index.corpus_id,
            bool(audit.params.get("adaptive")),
            audit.model_version_id,
        )
        latest.setdefault(key, audit)
    rows = []
    for (name, corpus_id, adaptive, version_id), audit in sorted(latest.items()):
        results = audit.results or {}
        rows.append(
            {
                "concept": name,
                "corpus": corpus_id,
                "corpus_name": audit.index.corpus.name,
                "adaptive": adaptive,
                **defence_headline(results),
                "model_version": version_id,
                "model_version_label": str(audit.model_version),
                "audit": audit.pk,
                "index": audit.index_id,
                "n_passages": len(audit.passages),
                "n_held_out": len(audit.held_out),
                **{ref: (results.get(ref) or {}).get(HEADLINE) for ref in REFERENCES},
            }
        )
    return rows
