"""Embedding throughput, side by side in one run on the same documents:

1. bare forward: the model alone on pre-tokenised, globally length-sorted batches;
2. the platform's embed job (read from Postgres, tokenise, encode, COPY, HNSW build);
3. the path a user would write by hand: sentence-transformers `encode` + row-by-row
   INSERTs through pgvector-python.

    .venv/bin/python benchmarks/throughput/run.py [--docs 2000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import bench_user, machine, setup  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact" / "corpus.jsonl"
OUT = Path(__file__).resolve().parent / "out"


def load_docs(n: int) -> list[dict]:
    docs = []
    with open(DATA) as fh:
        for line in fh:
            docs.append(json.loads(line))
            if len(docs) == n:
                break
    return docs


def doc_text(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}" if doc.get("title") else doc["text"]


def bare_forward(texts: list[str], batch_size: int) -> float:
    from workers.ml.encoder import Encoder
    from workers.ml.spec import default_model_path, read_model_spec

    encoder = Encoder(read_model_spec(default_model_path()))
    batches = encoder.tokenize_batches(texts, batch_size=batch_size)
    encoder.forward(batches[-1])  # warm-up
    start = time.perf_counter()
    for batch in batches:
        encoder.forward(batch)
    return len(texts) / (time.perf_counter() - start)


def platform_job(docs: list[dict], batch_size: int) -> tuple[float, dict]:
    from embedhub.corpora.models import Corpus, Document
    from embedhub.jobs.runner import job_execute
    from embedhub.jobs.submission import job_submit_checked
    from embedhub.registry.services import model_version_default

    user = bench_user()
    Corpus.objects.filter(owner=user, name="throughput").delete()
    corpus = Corpus.objects.create(owner=user, name="throughput")
    Document.objects.bulk_create(
        Document(corpus=corpus, external_id=d["_id"], title=d.get("title", ""), text=d["text"],
                 content_hash=hashlib.sha256(f"{d.get('title', '')}\n{d['text']}".encode()).hexdigest())
        for d in docs
    )  # fmt: skip
    version = model_version_default()
    params = {"corpus": corpus.pk, "model_version": version.pk, "batch_size": batch_size}
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    start = time.perf_counter()
    outcome = job_execute(job_id=job.pk, worker="bench")
    seconds = time.perf_counter() - start
    job.refresh_from_db()
    assert outcome == "succeeded", job.error
    return len(docs) / seconds, job.result


def by_hand(texts: list[str], batch_size: int) -> float:
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector
    from sentence_transformers import SentenceTransformer

    from workers.ml.spec import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    settings = connection.settings_dict
    dsn = f"host={settings['HOST']} port={settings['PORT']} user={settings['USER']} dbname={settings['NAME']}"
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS by_hand")
        conn.execute("CREATE TABLE by_hand (id bigint PRIMARY KEY, embedding vector(384))")
        for i, vector in enumerate(vectors):
            conn.execute("INSERT INTO by_hand (id, embedding) VALUES (%s, %s)", (i, vector))
        conn.commit()
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    setup("embedhub_bench")
    docs = load_docs(args.docs)
    texts = [doc_text(d) for d in docs]
    bare = bare_forward(texts, args.batch_size)
    job_rate, result = platform_job(docs, args.batch_size)
    hand = by_hand(texts, args.batch_size)
    bare_again = bare_forward(texts, args.batch_size)
    report = {
        "machine": machine(),
        "docs": len(docs),
        "batch_size": args.batch_size,
        "bare_forward_docs_per_s": [round(bare, 1), round(bare_again, 1)],
        "embed_job_docs_per_s": round(job_rate, 1),
        "embed_job_result": result,
        "by_hand_docs_per_s": round(hand, 1),
        "job_over_bare": round(job_rate / ((bare + bare_again) / 2), 3),
        "job_over_by_hand": round(job_rate / hand, 3),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
