"""Index runtimes side by side: torch fp32, ONNX Runtime fp32, the platform's onnx-int8
and the naive int8 baseline (the unfused export, whole-model per-tensor dynamic int8).

Every variant is the platform's own encoder class (workers.ml: Encoder, OnnxEncoder) with
the same tokenisation, bucketing and pooling; the onnx and onnx-int8 graphs come from the
platform's export cache (built on first use, exactly as a worker builds them).

1. Speed: the same --speed-docs documents through `iter_encode` (the embed job's path),
   --rounds interleaved rounds, the order of the variants rotated each round; docs/s per
   round and each round's ratio to torch; the median ratio is the figure.
2. Quality: the whole corpus and the test queries encoded by each variant, exact cosine
   search, nDCG@10 (trec_eval semantics) and its per-query delta to torch with the standard
   error; cosine of each document's vector to torch fp32.

    .venv/bin/python benchmarks/runtimes/run.py [--data ../shared/data/scifact]
        [--speed-docs 256] [--rounds 5] [--batch-size 32] [--threads 2]
        [--variants torch,onnx,onnx-int8,naive-int8] [--no-ndcg] [--gate]

--gate also runs the platform's own onnx-int8 embed job on the corpus (database
embedhub_bench, its own corpus "runtimes-<folder>" with the test query set), so its quality
gate's sampled estimate can be read beside the full-corpus delta measured here.

Extra variants for choosing a recipe, all on the fused fp32 graph: pt-all (every op
quantised, per-tensor weights; onnx-int8 is the same per-channel), pc-keep-ffn / pt-keep-ffn
(the feed-forward output projections kept fp32). Writes benchmarks/runtimes/out/result.json
(--out names another file there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import ROOT, bench_user, machine, setup  # noqa: E402
from workers.ml import onnx_export  # noqa: E402
from workers.ml.encoder import Encoder  # noqa: E402
from workers.ml.metrics import evaluate_run  # noqa: E402
from workers.ml.quality import cosine_stats  # noqa: E402
from workers.ml.runtimes import (  # noqa: E402
    ONNX,
    ONNX_INT8,
    OnnxEncoder,
    artifact_digest,
    built_once,
    onnx_model_file,
)
from workers.ml.search import topk_cosine  # noqa: E402
from workers.ml.spec import default_model_path, read_model_spec  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DATA = ROOT.parent / "shared" / "data" / "scifact"
CACHE = ROOT / "var" / "artifacts" / "onnx"  # the platform's default ARTIFACT_ROOT/onnx


# ------------------------------------------------------------------ data


def load_beir(data: Path) -> tuple[list[str], list[str], list[str], list[str], dict]:
    docs = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    doc_ids = [d["_id"] for d in docs]
    texts = [f"{d['title']} {d['text']}" if d.get("title") else d["text"] for d in docs]
    qrels: dict[str, dict[str, int]] = {}
    qrels_file = (
        data / "qrels_test.tsv" if (data / "qrels_test.tsv").exists() else data / "qrels.tsv"
    )
    for line in qrels_file.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").open())}
    query_ids = [q for q in queries if q in qrels]
    return doc_ids, texts, query_ids, [queries[q] for q in query_ids], qrels


# ------------------------------------------------------------------ variants


def _bench_file(spec, name: str, build) -> Path:
    folder = Path(CACHE) / artifact_digest(spec.path)
    return built_once(folder / f"bench-{name}.onnx", build)


def variant_files(spec) -> dict[str, Path]:
    """Graph file of every ONNX variant (the platform's two through its own cache)."""
    fp32 = onnx_model_file(spec.path, runtime=ONNX, cache_root=CACHE)
    int8 = onnx_model_file(spec.path, runtime=ONNX_INT8, cache_root=CACHE)

    def naive(tmp: Path) -> None:
        raw = tmp.with_name(f"{tmp.stem}-raw.onnx")
        onnx_export.export_raw(spec.path, raw)
        onnx_export.quantize_int8(raw, tmp, per_channel=False)
        raw.unlink()

    return {
        ONNX: fp32,
        ONNX_INT8: int8,
        "naive-int8": _bench_file(spec, "naive-int8", naive),
        **{name: _bench_file(spec, name, _recipe(fp32, **kw)) for name, kw in EXTRAS.items()},
    }


# Other recipes on the fused fp32 graph, for choosing the platform's (RESULTS.md). The
# platform's own (ONNX_INT8) is per-channel on every op, the former "pc-all".
EXTRAS = {
    "pc-keep-ffn": {"per_channel": True, "keep_ffn": True},
    "pt-all": {"per_channel": False, "keep_ffn": False},
    "pt-keep-ffn": {"per_channel": False, "keep_ffn": True},
}


def _recipe(fp32: Path, *, per_channel: bool, keep_ffn: bool):
    keep = onnx_export.ffn_output_nodes(fp32) if keep_ffn else []

    def build(tmp: Path) -> None:
        onnx_export.quantize_int8(fp32, tmp, per_channel=per_channel, keep_fp32=keep)

    return build


def load_variants(names: list[str], threads: int) -> dict:
    spec = read_model_spec(default_model_path())
    files = variant_files(spec)
    encoders = {}
    for name in names:
        if name == "torch":
            encoders[name] = Encoder(spec, device="cpu")
        else:
            encoders[name] = OnnxEncoder(spec, model_file=files[name], threads=threads)
    return encoders


def encode_all(encoder, texts: list[str], *, kind: str, batch_size: int) -> np.ndarray:
    """Through iter_encode, the embed job's path (windowed bucketing, prefetch thread)."""
    out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    for batch in encoder.iter_encode(enumerate(texts), kind=kind, batch_size=batch_size):
        out[batch.keys] = batch.vectors
    return out


# ------------------------------------------------------------------ measurements


def speed(encoders: dict, texts: list[str], *, rounds: int, batch_size: int) -> dict:
    names = list(encoders)
    encode_all(encoders[names[0]], texts[:64], kind="document", batch_size=batch_size)
    per_round = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        row = {"load_before": round(os.getloadavg()[0], 2)}
        for name in order:
            started = time.perf_counter()
            encode_all(encoders[name], texts, kind="document", batch_size=batch_size)
            row[name] = round(len(texts) / (time.perf_counter() - started), 2)
        row["load_after"] = round(os.getloadavg()[0], 2)
        per_round.append(row)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {row[n]:.1f}" for n in names), flush=True)
    ratios = {
        name: [round(row[name] / row["torch"], 3) for row in per_round]
        for name in names
        if "torch" in names
    }
    return {
        "rounds": per_round,
        "ratio_to_torch_per_round": ratios,
        "median_ratio_to_torch": {n: statistics.median(v) for n, v in ratios.items()},
        "median_docs_per_second": {n: statistics.median(r[n] for r in per_round) for n in names},
    }


def per_query_ndcg(docs, queries, *, doc_ids, query_ids, qrels) -> np.ndarray:
    rows, scores = topk_cosine(queries, docs, k=100)
    run = {
        qid: {doc_ids[j]: float(s) for j, s in zip(row, sc, strict=True)}
        for qid, row, sc in zip(query_ids, rows.tolist(), scores, strict=True)
    }
    per_query = evaluate_run(qrels=qrels, run=run).per_query
    return np.array([per_query[q]["ndcg@10"] for q in query_ids])


def quality(encoders: dict, data, *, batch_size: int) -> dict:
    doc_ids, texts, query_ids, query_texts, qrels = data
    vectors, results = {}, {}
    for name, encoder in encoders.items():
        started = time.perf_counter()
        docs = encode_all(encoder, texts, kind="document", batch_size=batch_size)
        seconds = time.perf_counter() - started
        queries = encoder.encode(query_texts, kind="query")
        vectors[name] = docs
        ndcg = per_query_ndcg(docs, queries, doc_ids=doc_ids, query_ids=query_ids, qrels=qrels)
        results[name] = {
            "ndcg@10": round(float(ndcg.mean()), 5),
            "corpus_pass_seconds": round(seconds, 1),
        }
        results[name]["_per_query"] = ndcg
        print(f"  {name}: nDCG@10 {ndcg.mean():.4f} ({seconds:.0f} s for the corpus)", flush=True)
    if "torch" in encoders:
        reference = results["torch"]["_per_query"]
        for name, result in results.items():
            delta = result["_per_query"] - reference
            result["delta_points"] = round(100 * float(delta.mean()), 3)
            result["delta_se_points"] = round(
                100 * float(delta.std(ddof=1) / np.sqrt(len(delta))), 3
            )
            result["queries_changed"] = int((np.abs(delta) > 1e-9).sum())
            result["cosine_to_torch"] = cosine_stats(vectors["torch"], vectors[name])
    for result in results.values():
        del result["_per_query"]
    return {"queries": len(query_ids), "documents": len(doc_ids), "variants": results}


def platform_gate(data_dir: Path) -> dict:
    """An onnx-int8 embed job through the platform (job_execute, as a worker runs it)."""
    setup("embedhub_bench")
    # Imported only now: the models need the Django setup above.
    from embedhub.corpora.models import Corpus
    from embedhub.corpora.services import corpus_create, corpus_delete, corpus_ingest_file
    from embedhub.evaluation.services import query_set_create
    from embedhub.jobs.runner import job_execute
    from embedhub.jobs.submission import job_submit_checked

    user, name = bench_user(), f"runtimes-{data_dir.name}"
    for old in Corpus.objects.filter(owner=user, name=name):
        corpus_delete(corpus=old)
    corpus = corpus_create(owner=user, name=name)
    corpus_ingest_file(
        corpus_id=corpus.pk, path=data_dir / "corpus.jsonl", fmt="jsonl", owner_id=user.pk
    )
    qrels = data_dir / "qrels_test.tsv"
    query_set_create(
        owner=user,
        corpus=corpus,
        name="test",
        queries_file=data_dir / "queries.jsonl",
        qrels_file=qrels if qrels.exists() else data_dir / "qrels.tsv",
    )
    params = {"corpus": corpus.pk, "runtime": ONNX_INT8, "force": True}
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    outcome = job_execute(job_id=job.pk, worker="bench")
    job.refresh_from_db()
    if outcome != "succeeded":
        raise SystemExit(f"embed job {job.pk} {outcome}: {job.error}")
    keys = ("embedded", "embed_seconds", "docs_per_second", "finalise_seconds", "quality")
    print(f"  platform gate: {job.result['quality']['verdict']}", flush=True)
    return {key: job.result[key] for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--speed-docs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="torch,onnx,onnx-int8,naive-int8")
    parser.add_argument("--no-ndcg", action="store_true")
    parser.add_argument("--gate", action="store_true")
    parser.add_argument("--out", default="result.json", help="file name under out/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    data = load_beir(args.data)
    print(f"machine: {machine()}; load {os.getloadavg()}", flush=True)
    encoders = load_variants(names, args.threads)
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"speed: {args.speed_docs} documents × {args.rounds} rounds", flush=True)
    result["speed"] = speed(
        encoders, data[1][: args.speed_docs], rounds=args.rounds, batch_size=args.batch_size
    )
    if not args.no_ndcg:
        print(f"quality: {len(data[0])} documents, {len(data[2])} queries", flush=True)
        result["quality"] = quality(encoders, data, batch_size=args.batch_size)
    if args.gate:
        print("platform: an onnx-int8 embed job and its quality gate", flush=True)
        result["platform_gate"] = platform_gate(args.data)
    result["load_at_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"median_ratio_to_torch": result["speed"].get("median_ratio_to_torch")}))


if __name__ == "__main__":
    main()
