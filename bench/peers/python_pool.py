#!/usr/bin/env python3
"""Python's multiprocessing.Pool (spawn start method) on procpool's bench
workloads. Prints one JSON object; the Rust harness runs it and compares.

Usage: python_pool.py [--quick]
"""
import json
import multiprocessing as mp
import os
import sys
import time


def square(x):
    return x * x


def spin(iters):
    # About as much work per item as the Rust harness's spin(); calibrated
    # by the harness, which passes the iteration count for ~10 ms.
    acc = 0
    for i in range(iters):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    quick = "--quick" in sys.argv
    ctx = mp.get_context("spawn")
    out = {}

    # a. start-up: Pool(2) and the first result back.
    runs = []
    for _ in range(2 if quick else 5):
        t = time.perf_counter()
        with ctx.Pool(2) as pool:
            pool.apply(square, (3,))
            runs.append(time.perf_counter() - t)
    out["startup_s"] = median(runs)

    with ctx.Pool(2) as pool:
        pool.apply(square, (1,))
        # b. apply round trips.
        n = 200 if quick else 5000
        lat = []
        for i in range(n):
            t = time.perf_counter()
            pool.apply(square, (i,))
            lat.append(time.perf_counter() - t)
        out["apply_p50_s"] = median(lat)
        out["apply_p99_s"] = pct(lat, 0.99)

        # c. map of x*x over 1M ints, default chunk size (median of 3).
        n = 20_000 if quick else 1_000_000
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            r = pool.map(square, range(n))
            rates.append(n / (time.perf_counter() - t))
            assert r[-1] == (n - 1) ** 2
        out["map_items_per_s"] = median(rates)

        # d. imap_unordered, chunk size 1 (median of 3).
        n = 2_000 if quick else 200_000
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            count = sum(1 for _ in pool.imap_unordered(square, range(n), chunksize=1))
            rates.append(n / (time.perf_counter() - t))
            assert count == n
        out["imap_unordered_items_per_s"] = median(rates)

    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
