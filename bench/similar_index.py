"""Similarity search at scale: the index the gateway uses (listener.store.vector_index: a 4-bit
product-quantisation fast scan with an exact re-rank, faiss) over N random unit vectors of
MedImageInsight's dimension, against exact search.

Measures index build time (training the codes, then adding the vectors in chunks), top-10 latency
of single queries (median and 95th percentile), recall@10 against exact cosine search (numpy,
float32, in chunks), the latency of that exact search for single queries (the peer, measured in
the same run), and memory (the index's resident growth while it was built, and the process's peak
resident set, which also holds the float32 copy the exact search needs). Random unit vectors in
1024 dimensions are the hard case: they have no cluster structure, so the true neighbours are
only a few standard deviations closer than any other vector.

    nice -n 5 .venv/bin/python bench/similar_index.py --n 1000000 --queries 100
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import numpy.typing as npt

from listener.store.vector_index import knn, new_index, train

CHUNK = 50_000


def rss_mib() -> float:
    """The process's resident set now (Linux /proc), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    """``n`` uniform random unit vectors, drawn in chunks (no float64 copy of the whole set)."""
    data = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        chunk = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)
        data[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return data


def exact_top(
    data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    """Each query's exact top ``k`` ids by inner product, scanning ``data`` in chunks."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(data), CHUNK):
        scores = np.concatenate([best_scores, queries @ data[start : start + CHUNK].T], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, start + CHUNK), (len(queries), CHUNK))],
            axis=1,
        )
        keep = np.argpartition(-scores, k, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(ids, keep, axis=1)
    return best_ids


def main() -> None:
    """Build the index, run the queries, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--peer-queries", type=int, default=10, help="single exact searches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    assert args.n % CHUNK == 0 or args.n < CHUNK, "--n: a multiple of 50,000"

    rng = np.random.default_rng(args.seed)
    data = unit_vectors(rng, args.n, args.dim)
    queries = unit_vectors(rng, args.queries, args.dim)  # fresh ones, not stored vectors
    before = rss_mib()
    started = time.perf_counter()
    index = new_index(args.dim, compressed=True)
    train(index, data)
    trained_s = time.perf_counter() - started
    for start in range(0, args.n, CHUNK):
        index.add_with_ids(data[start : start + CHUNK], np.arange(start, start + CHUNK))
    build_s = time.perf_counter() - started
    index_mib = rss_mib() - before

    latencies, hits = [], 0
    truth = exact_top(data, queries, 10)
    cpu = time.process_time()
    for query, exact in zip(queries, truth, strict=True):
        started = time.perf_counter()
        _, ids = knn(index, query.reshape(1, -1), 10)
        latencies.append(time.perf_counter() - started)
        hits += len(set(ids[0].tolist()) & set(exact.tolist()))
    cpu_ms = (time.process_time() - cpu) * 1e3 / args.queries
    peer = []
    for query in queries[: args.peer_queries]:
        started = time.perf_counter()
        np.argpartition(-(data @ query), 10)[:10]
        peer.append(time.perf_counter() - started)
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    print(f"n={args.n} dim={args.dim} queries={args.queries} seed={args.seed} load1={load}")
    print(f"build_s={build_s:.1f} (training {trained_s:.1f} s, {args.n / build_s:.0f} vectors/s)")
    p50, p95 = np.median(latencies) * 1e3, np.percentile(latencies, 95) * 1e3
    print(f"top10_latency_ms p50={p50:.2f} p95={p95:.2f} cpu_per_query_ms={cpu_ms:.2f}")
    peer50 = np.median(peer) * 1e3
    print(f"exact_numpy_latency_ms p50={peer50:.1f} (index {peer50 / p50:.0f}x faster)")
    print(f"recall_at_10={hits / (10 * args.queries):.4f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"index_memory_mib={index_mib:.0f} vectors_f32_mib={data.nbytes / 2**20:.0f}"
        f" peak_rss_mib={peak:.0f}"
    )


if __name__ == "__main__":
    main()
