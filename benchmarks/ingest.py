"""Ingestion throughput and memory: N and 4N synthetic pairs from local HTTP and S3 servers.

    .venv/bin/python benchmarks/ingest.py            # N = 1,000,000 (then 4N = 4,000,000), about 6 minutes
    .venv/bin/python benchmarks/ingest.py --n 200000
    .venv/bin/python benchmarks/ingest.py --n 50000 --cases aligned

Half the pairs are served over HTTP (a real http.server on 127.0.0.1), half from moto's S3 server; each size
runs in a fresh child process through the real connectors, validation, staging and shard writing. Two cases:
`jsonl`, gzipped JSONL files (`http` and `s3` sources), and `aligned`, pairs of gzipped one-sentence-a-line
files (`train.en.gz` + `train.hi.gz`, `aligned` sources: found by a pattern over HTTP, by listing in S3, and read
in lock step). Goals: at least 50,000 records/s, and peak RSS at 4N within 20% of N.

records/s is rows read over the time `stage_source` and `write_shards` take in the child (not interpreter
start-up or imports; one-time table building and lazy imports inside them count). Peak RSS is the child's
own high-water mark (VmHWM, which starts afresh at exec), cross-checked by sampling the child's RSS from
here. The servers run in this process and share the machine's cores with the child, so their CPU time is
shown too, with the load average: on a shared machine, read the rates next to it. The pairs are FLORES dev
sentences repeated with a unique suffix, so nothing is a duplicate and staged parts compress unusually well.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


CASES = ("jsonl", "aligned")
LANGS = {"src": "eng_Latn", "tgt": "hin_Deva"}


def _flores_dev() -> tuple[list[str], list[str]]:
    eng = (ROOT / "data/flores200/dev/eng_Latn.dev").read_text(encoding="utf-8").splitlines()
    hin = (ROOT / "data/flores200/dev/hin_Deva.dev").read_text(encoding="utf-8").splitlines()
    return eng, hin


def write_corpus(path: Path, n: int, offset: int) -> None:
    eng, hin = _flores_dev()
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(offset, offset + n):
            k = i % len(eng)
            row = {"src": f"{eng[k]} ({i})", "tgt": f"{hin[k]} ({i})", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_aligned(folder: Path, n: int, offset: int) -> None:
    """`train.en.gz` and `train.hi.gz` in `folder`, line i of one translating line i of the other."""
    eng, hin = _flores_dev()
    folder.mkdir(parents=True, exist_ok=True)
    with (
        gzip.open(folder / "train.en.gz", "wt", encoding="utf-8", compresslevel=1) as en,
        gzip.open(folder / "train.hi.gz", "wt", encoding="utf-8", compresslevel=1) as hi,
    ):
        for i in range(offset, offset + n):
            k = i % len(eng)
            en.write(f"{eng[k]} ({i})\n")
            hi.write(f"{hin[k]} ({i})\n")


def case_sources(case: str, http_url: str, s3_uri: str, endpoint: str) -> list[dict[str, Any]]:
    """The two sources of a case: one over HTTP, one in S3."""
    if case == "aligned":
        return [
            {"name": "web", "kind": "aligned", "uri": http_url, "pattern": "train.{lang}", "langs": LANGS},
            {"name": "lake", "kind": "aligned", "uri": s3_uri, "endpoint_url": endpoint, "langs": LANGS},
        ]
    return [
        {"name": "web", "kind": "http", "uri": http_url, "format": "jsonl"},
        {"name": "lake", "kind": "s3", "uri": s3_uri, "endpoint_url": endpoint},
    ]


def peak_rss_mb() -> float:
    """This process's peak resident set since it was exec'd (VmHWM).

    Not `ru_maxrss`: that survives exec and so counts the parent this child was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(case: str, n: int, http_url: str, s3_uri: str, endpoint: str, workdir: str) -> None:
    """Ingest in this process and print one JSON line of figures."""
    from bhashaflow.config import PipelineConfig
    from bhashaflow.core.settings import Settings
    from bhashaflow.data.ingest import stage_source, write_shards
    from connectors import open_connector

    config = PipelineConfig.model_validate(
        {
            "run_name": "bench",
            "workdir": workdir,
            "directions": ["eng_Latn-hin_Deva"],
            "sources": case_sources(case, http_url, s3_uri, endpoint),
        }
    )
    settings = Settings()
    ready_rss = peak_rss_mb()
    cpu0, start = time.process_time(), time.perf_counter()
    staged = [
        stage_source(config, s, open_connector(s, settings, config.directions), config.run_uri())
        for s in config.sources
    ]
    staged_at = time.perf_counter()
    manifest = write_shards(config, staged, config.run_uri())
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "case": case,
                "n": n,
                "read": manifest["totals"]["read"],
                "accepted": manifest["totals"]["accepted"],
                "seconds": end - start,
                "stage_seconds": staged_at - start,
                "shard_seconds": end - staged_at,
                "cpu_seconds": time.process_time() - cpu0,
                "ready_rss_mb": ready_rss,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def run_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run one child; its JSON figures and the largest RSS seen by sampling it every 20 ms."""
    import psutil

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = [0.0]
    watched = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            try:
                sampled[0] = max(sampled[0], watched.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), sampled[0]


def put_inputs(case: str, n: int, root: Path, web: Path, http: Any, s3: Any) -> tuple[str, str]:
    """Serve the case's N pairs, half over HTTP and half from S3; the URL and the s3 uri of the two halves."""
    half = n // 2
    if case == "aligned":
        write_aligned(web / f"aligned-{n}", half, 0)
        part = root / f"lake-{n}"
        write_aligned(part, n - half, half)
        for name in ("train.en.gz", "train.hi.gz"):
            s3.put("bench", f"aligned-{n}/{name}", part / name)
        shutil.rmtree(part)
        return http.url(f"aligned-{n}"), f"s3://bench/aligned-{n}"
    write_corpus(web / f"pairs-{n}.jsonl.gz", half, 0)
    part = root / f"lake-{n}.jsonl.gz"
    write_corpus(part, n - half, half)
    s3.put("bench", f"lake-{n}/part.jsonl.gz", part)
    part.unlink()
    return http.url(f"pairs-{n}.jsonl.gz"), f"s3://bench/lake-{n}/"


def measure(case: str, n: int, root: Path, web: Path, http: Any, s3: Any) -> dict[str, Any]:
    """Ingest one case at one size in a fresh child; its figures, printed as one line."""
    http_url, s3_uri = put_inputs(case, n, root, web, http, s3)
    load = os.getloadavg()[0]
    servers_cpu = resource.getrusage(resource.RUSAGE_SELF)
    figures, sampled = run_child(
        [sys.executable, __file__, "--child", case, str(n), http_url, s3_uri, s3.endpoint_url, str(root / f"runs-{n}")]
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures["servers_cpu_seconds"] = (after.ru_utime - servers_cpu.ru_utime) + (after.ru_stime - servers_cpu.ru_stime)
    figures["sampled_rss_mb"] = sampled
    figures["load_before"], figures["load_after"] = load, os.getloadavg()[0]
    print(
        f"{case:<8} N={n:>9,}: {figures['read'] / figures['seconds']:>7,.0f} records/s "
        f"({figures['seconds']:.1f} s: staging {figures['stage_seconds']:.1f}, shards {figures['shard_seconds']:.1f}); "
        f"peak RSS {figures['peak_rss_mb']:.0f} MB (sampled {sampled:.0f}, {figures['ready_rss_mb']:.0f} before "
        f"reading); CPU: ingest {figures['cpu_seconds']:.1f} s, servers {figures['servers_cpu_seconds']:.1f} s; "
        f"load average {load:.2f} -> {figures['load_after']:.2f}",
        flush=True,
    )
    (web / f"pairs-{n}.jsonl.gz").unlink(missing_ok=True)  # keep the disk for the next size
    shutil.rmtree(web / f"aligned-{n}", ignore_errors=True)
    shutil.rmtree(root / f"runs-{n}", ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: jsonl, aligned (default both)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, n, http_url, s3_uri, endpoint, workdir = args.child
        child(case, int(n), http_url, s3_uri, endpoint, workdir)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")

    from servers import FaultyHTTPServer, S3Server

    results: dict[str, list[dict[str, Any]]] = {}
    print(f"{os.cpu_count()} CPUs; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        web = root / "web"
        web.mkdir()
        s3 = S3Server().start()
        os.environ.update(
            {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        )
        s3.create_bucket("bench")
        with FaultyHTTPServer(web) as http:
            for case in cases:
                results[case] = [measure(case, n, root, web, http, s3) for n in (args.n, 4 * args.n)]
        s3.stop()
    for case, (small, large) in results.items():
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        rate = min(r["read"] / r["seconds"] for r in (small, large))
        print(
            f"{case}: peak RSS 4N/N = {ratio:.2f} (goal <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'}); "
            f"slowest rate {rate:,.0f} records/s (goal >= 50,000: {'met' if rate >= 50_000 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
