"""Similarity search at scale: the usearch HNSW index the gateway uses (listener.store.vector_index)
over N random unit vectors of MedImageInsight's dimension, against exact search.

Measures index build time, top-10 latency of single queries (median and 95th percentile), recall@10
against exact cosine search (numpy, float32), and memory (the index's own figure and the process's
peak resident set). Random unit vectors in 1024 dimensions are the hard case for a graph index:
they have no cluster structure, so every neighbour is nearly as far as every other.

    .venv/bin/python bench/similar_index.py --n 100000 --queries 200
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from listener.store.vector_index import new_index


def main() -> None:
    """Build the index, run the queries, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--expansion-search", type=int, default=128)
    parser.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="draw the vectors around this many random centres (0: uniform on the sphere)",
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    data = np.empty((args.n, args.dim), dtype=np.float32)
    centres = rng.standard_normal((max(args.clusters, 1), args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, args.n, 50_000):  # in chunks: no float64 copy of the whole set
        chunk = rng.standard_normal((min(50_000, args.n - start), args.dim), dtype=np.float32)
        if args.clusters:  # each vector near a centre, as embeddings of similar images are
            chunk = chunk / np.sqrt(args.dim) + centres[rng.integers(0, args.clusters, len(chunk))]
        data[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    index = new_index(args.dim, args.expansion_search)
    started = time.perf_counter()
    index.add(np.arange(args.n, dtype=np.uint64), data)
    build_s = time.perf_counter() - started

    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)  # fresh ones
    if args.clusters:
        queries = (
            queries / np.sqrt(args.dim) + centres[rng.integers(0, args.clusters, args.queries)]
        )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    latencies, hits = [], 0
    for query in queries:
        started = time.perf_counter()
        found = index.search(query, 10)
        latencies.append(time.perf_counter() - started)
        exact = np.argpartition(-(data @ query), 10)[:10]
        hits += len(set(int(k) for k in found.keys) & set(int(k) for k in exact))
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"n={args.n} dim={args.dim} clusters={args.clusters} ef={args.expansion_search}")
    print(f"build_s={build_s:.1f} ({args.n / build_s:.0f} vectors/s)")
    print(
        f"top10_latency_ms p50={np.median(latencies) * 1e3:.2f}"
        f" p95={np.percentile(latencies, 95) * 1e3:.2f}"
    )
    print(f"recall_at_10={hits / (10 * args.queries):.4f}")
    print(
        f"index_memory_mib={index.memory_usage / 2**20:.0f}"
        f" vectors_f32_mib={data.nbytes / 2**20:.0f} peak_rss_mib={rss_mib:.0f}"
    )


if __name__ == "__main__":
    main()
