"""Times dml_tf.reid.evaluate on a Market-1501-sized problem of random features.

    python -m tools.benchmark_reid_eval [--num_query=3368 --num_gallery=19732 --dim=1024]

Ids and cameras are drawn in Market-1501's ranges (750 test ids, cameras 1..6, about
14% distractors (id 0) and 13% junk (id -1) in the gallery). Prints wall time and peak
memory; asserts nothing. Memory is reported two ways: the peak of NumPy/Python
allocations during the evaluation as traced by ``tracemalloc`` (a second, traced run,
since tracing slows allocation), and the growth of the process's peak resident set
size (``resource.getrusage`` ``ru_maxrss``) across the untraced run.
"""

import os
import sys
import time
import tracemalloc

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

import numpy as np
from absl import flags

from dml_tf.reid.metrics import evaluate, pool_multi_query
from tools._common import peak_rss_mib

flags.DEFINE_integer("num_query", 3368, "Query images.")
flags.DEFINE_integer("num_gallery", 19732, "Gallery images.")
flags.DEFINE_integer("num_mq", 25259, "Multi-query (gt_bbox) images; 0 skips multi-query.")
flags.DEFINE_integer("dim", 1024, "Feature dimension.")
flags.DEFINE_integer("chunk_size", 256, "Queries per chunk.")
flags.DEFINE_enum("ap_mode", "market1501", ["market1501", "standard"], "AP definition.")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def _problem(rng):
    q, g = FLAGS.num_query, FLAGS.num_gallery
    query_ids = rng.integers(1, 751, q)
    query_cams = rng.integers(1, 7, q)
    gallery_ids = rng.choice(
        np.concatenate([np.arange(1, 751), [0], [-1]]),
        g,
        p=np.concatenate([np.full(750, 0.73 / 750), [0.14], [0.13]]),
    )
    gallery_cams = rng.integers(1, 7, g)
    query_features = rng.standard_normal((q, FLAGS.dim), dtype=np.float32)
    gallery_features = rng.standard_normal((g, FLAGS.dim), dtype=np.float32)
    return query_features, gallery_features, query_ids, query_cams, gallery_ids, gallery_cams


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    problem = _problem(rng)
    print(
        f"problem: {FLAGS.num_query} queries x {FLAGS.num_gallery} gallery, {FLAGS.dim}-d float32, "
        f"chunk_size={FLAGS.chunk_size}, ap_mode={FLAGS.ap_mode}, cpus={os.cpu_count()}"
    )
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    result = evaluate(*problem, ap_mode=FLAGS.ap_mode, chunk_size=FLAGS.chunk_size)
    seconds = time.perf_counter() - start
    rss_after = peak_rss_mib()
    print(f"single query: {seconds:.2f} s wall; mAP={result['mAP']:.4f} R1={result['cmc'][0]:.4f} "
          f"({result['num_queries']} scored, {result['num_skipped']} skipped)")
    print(f"  peak RSS growth (getrusage ru_maxrss delta): {rss_after - rss_before:.1f} MiB "
          f"(process peak {rss_after:.1f} MiB, inputs {sum(a.nbytes for a in problem) / 2**20:.1f} MiB)")

    tracemalloc.start()
    evaluate(*problem, ap_mode=FLAGS.ap_mode, chunk_size=FLAGS.chunk_size)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak traced allocations during evaluate (tracemalloc): {peak / 2**20:.1f} MiB")

    if FLAGS.num_mq:
        mq_features = rng.standard_normal((FLAGS.num_mq, FLAGS.dim), dtype=np.float32)
        mq_ids = rng.integers(1, 751, FLAGS.num_mq)
        mq_cams = rng.integers(1, 7, FLAGS.num_mq)
        start = time.perf_counter()
        pooled = pool_multi_query(problem[2], problem[3], mq_features, mq_ids, mq_cams, "mean", problem[0])
        pool_seconds = time.perf_counter() - start
        print(f"multi-query pooling ({FLAGS.num_mq} gt_bbox images): {pool_seconds:.2f} s wall; shape {pooled.shape}")


if __name__ == "__main__":
    from dml_tf import cli

    cli.run(main)
