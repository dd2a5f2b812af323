from django.core.files.uploadedfile import SimpleUploadedFile

from tests.evaluation.conftest import add_documents
from tests.factories import CorpusFactory

QUERIES = b'{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n{"_id": "q3", "text": "unjudged"}\n'
QRELS = b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td3\t1\n"


def _upload(api, corpus, *, name="dev", queries=QUERIES, qrels=QRELS):
    return api.post(
        "/api/v1/query-sets/",
        {
            "corpus": corpus.pk,
            "name": name,
            "queries": SimpleUploadedFile("queries.jsonl", queries),
            "qrels": SimpleUploadedFile("dev.tsv", qrels),
        },
        format="multipart",
    )


def test_upload_creates_query_set_with_counts_and_lists_it(api, user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two", "d3": "three"})
    response = _upload(api, corpus)
    assert response.status_code == 201, response.content
    body = response.json()
    # q3 has no judgement: it cannot be scored, so the import leaves it out.
    assert (body["name"], body["query_count"], body["qrel_count"]) == ("dev", 2, 3)
    detail = api.get(f"/api/v1/query-sets/{body['id']}/").json()
    assert detail["corpus"] == corpus.pk and detail["qrel_count"] == 3

    other = CorpusFactory(owner=user)
    add_documents(other, {"d1": "one", "d2": "two", "d3": "three"})
    _upload(api, other, name="other")
    listed = api.get("/api/v1/query-sets/", {"corpus": corpus.pk}).json()["results"]
    assert [q["id"] for q in listed] == [body["id"]]
    assert len(api.get("/api/v1/query-sets/").json()["results"]) == 2


def test_reupload_of_a_name_replaces_the_judgements(api, user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two", "d3": "three"})
    first = _upload(api, corpus).json()
    response = _upload(api, corpus, qrels=b"query-id\tcorpus-id\tscore\nq2\td3\t1\n")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == first["id"]
    assert (response.json()["query_count"], response.json()["qrel_count"]) == (1, 1)


def test_bad_qrels_line_is_named_with_file_and_line(api, user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two"})
    response = _upload(api, corpus, qrels=b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "dev.tsv" in message and "3" in message and "nope" in message
    assert api.get("/api/v1/query-sets/").json()["count"] == 0


def test_bad_queries_line_is_named(api, user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one"})
    response = _upload(api, corpus, queries=b'{"_id": "q1", "text": "ok"}\n{"_id": "q2"}\n')
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "queries.jsonl" in message and "2" in message and "text" in message


def test_other_users_corpus_and_query_set_are_404(api, other_api, user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two", "d3": "three"})
    query_set_id = _upload(api, corpus).json()["id"]
    assert other_api.get(f"/api/v1/query-sets/{query_set_id}/").status_code == 404
    assert other_api.get("/api/v1/query-sets/").json()["count"] == 0
    assert _upload(other_api, corpus, name="steal").status_code == 404


def test_query_set_upload_over_the_limit_is_413_with_the_error_shape(api, user, settings):
    total = len(QUERIES) + len(QRELS)  # the two files count together
    settings.EMBEDHUB_MAX_QUERY_SET_BYTES = total - 1
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two", "d3": "three"})
    response = _upload(api, corpus)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large"
    assert error["details"] == {"size": total, "limit": total - 1}
    assert "EMBEDHUB_MAX_QUERY_SET_BYTES" in error["message"]
    assert not corpus.query_sets.exists()
    settings.EMBEDHUB_MAX_QUERY_SET_BYTES = total
    assert _upload(api, corpus).status_code == 201


def test_query_set_upload_declaring_too_much_is_refused_before_it_is_read(api, user, settings):
    settings.EMBEDHUB_MAX_QUERY_SET_BYTES = 10
    corpus = CorpusFactory(owner=user)
    response = api.post(
        "/api/v1/query-sets/",
        data=b"x" * 100,
        content_type="multipart/form-data; boundary=b",
        CONTENT_LENGTH=str(10 * 1024**2),
    )
    assert response.status_code == 413
    assert response.json()["error"]["details"]["size"] == 10 * 1024**2
    assert not corpus.query_sets.exists()


def test_query_set_counts_are_subqueries_not_a_join_of_queries_with_qrels(api, user):
    # Joining both tables in one GROUP BY made NFCorpus's train set (2.6k queries × 110k
    # qrels) a 285M-row listing that never returned; the counts must not multiply.
    from embedhub.evaluation.selectors import query_set_list

    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two", "d3": "three"})
    _upload(api, corpus)
    listed = query_set_list(user=user, corpus_id=corpus.pk)
    joined = {table for table in listed.query.alias_map}
    assert not joined & {"evaluation_query", "evaluation_qrel"}, joined
    assert not listed.query.group_by
    assert [(q.query_count, q.qrel_count) for q in listed] == [(2, 3)]


def test_an_upload_into_a_corpus_the_caller_may_not_see_names_corpus_as_a_missing_one(
    api, other_api, user
):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two", "d3": "three"})
    missing = CorpusFactory.build(pk=987654)  # never saved: an id no account has

    def refused(target) -> str:
        response = _upload(other_api, target, name="steal")
        assert response.status_code == 404, response.content
        error = response.json()["error"]
        message = f"corpus {target.pk} not found"
        assert error["details"] == {"field": "corpus", "fields": {"corpus": [message]}}
        assert error["message"] == f"corpus: {message}"
        return response.content.decode().replace(str(target.pk), "<id>")

    assert refused(corpus) == refused(missing)
