"""Ingestion throughput and memory: N and 4N synthetic pairs from local HTTP and S3 servers.

    .venv/bin/python benchmarks/ingest.py            # N = 1,000,000 (then 4N = 4,000,000), about 3 minutes
    .venv/bin/python benchmarks/ingest.py --n 200000

Half the pairs are served over HTTP (a real http.server on 127.0.0.1), half from moto's S3 server, as
gzipped JSONL; each size runs in a fresh child process through the real connectors, validation, staging
and shard writing. Goals: at least 50,000 records/s, and peak RSS at 4N within 20% of N.

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


def write_corpus(path: Path, n: int, offset: int) -> None:
    eng = (ROOT / "data/flores200/dev/eng_Latn.dev").read_text(encoding="utf-8").splitlines()
    hin = (ROOT / "data/flores200/dev/hin_Deva.dev").read_text(encoding="utf-8").splitlines()
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(offset, offset + n):
            k = i % len(eng)
            row = {"src": f"{eng[k]} ({i})", "tgt": f"{hin[k]} ({i})", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def peak_rss_mb() -> float:
    """This process's peak resident set since it was exec'd (VmHWM).

    Not `ru_maxrss`: that survives exec and so counts the parent this child was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(n: int, http_url: str, s3_uri: str, endpoint: str, workdir: str) -> None:
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
            "sources": [
                {"name": "web", "kind": "http", "uri": http_url, "format": "jsonl"},
                {"name": "lake", "kind": "s3", "uri": s3_uri, "endpoint_url": endpoint},
            ],
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
    print(json.dumps({
        "n": n, "read": manifest["totals"]["read"], "accepted": manifest["totals"]["accepted"],
        "seconds": end - start, "stage_seconds": staged_at - start, "shard_seconds": end - staged_at,
        "cpu_seconds": time.process_time() - cpu0, "ready_rss_mb": ready_rss, "peak_rss_mb": peak_rss_mb(),
    }))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, http_url, s3_uri, endpoint, workdir = args.child
        child(int(n), http_url, s3_uri, endpoint, workdir)
        return

    from servers import FaultyHTTPServer, S3Server

    results = []
    print(f"{os.cpu_count()} CPUs; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        web = root / "web"
        web.mkdir()
        s3 = S3Server().start()
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        s3.create_bucket("bench")
        with FaultyHTTPServer(web) as http:
            for n in (args.n, 4 * args.n):
                half = n // 2
                write_corpus(web / f"pairs-{n}.jsonl.gz", half, 0)
                part = root / f"lake-{n}.jsonl.gz"
                write_corpus(part, n - half, half)
                s3.put("bench", f"lake-{n}/part.jsonl.gz", part)
                part.unlink()
                load = os.getloadavg()[0]
                servers_cpu = resource.getrusage(resource.RUSAGE_SELF)
                figures, sampled = run_child(
                    [sys.executable, __file__, "--child", str(n), http.url(f"pairs-{n}.jsonl.gz"),
                     f"s3://bench/lake-{n}/", s3.endpoint_url, str(root / f"runs-{n}")]
                )
                after = resource.getrusage(resource.RUSAGE_SELF)
                figures["servers_cpu_seconds"] = (after.ru_utime - servers_cpu.ru_utime) + (after.ru_stime - servers_cpu.ru_stime)
                figures["sampled_rss_mb"] = sampled
                figures["load_before"], figures["load_after"] = load, os.getloadavg()[0]
                results.append(figures)
                print(
                    f"N={n:>9,}: {figures['read'] / figures['seconds']:>7,.0f} records/s "
                    f"({figures['seconds']:.1f} s: staging {figures['stage_seconds']:.1f}, shards {figures['shard_seconds']:.1f}); "
                    f"peak RSS {figures['peak_rss_mb']:.0f} MB (sampled {sampled:.0f}, {figures['ready_rss_mb']:.0f} before "
                    f"reading); CPU: ingest {figures['cpu_seconds']:.1f} s, servers {figures['servers_cpu_seconds']:.1f} s; "
                    f"load average {load:.2f} -> {figures['load_after']:.2f}",
                    flush=True,
                )
                (web / f"pairs-{n}.jsonl.gz").unlink()
                shutil.rmtree(root / f"runs-{n}", ignore_errors=True)  # keep the disk for the next size
        s3.stop()
    small, large = results
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    rate = min(r["read"] / r["seconds"] for r in results)
    print(
        f"peak RSS 4N/N = {ratio:.2f} (goal <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'}); "
        f"slowest rate {rate:,.0f} records/s (goal >= 50,000: {'met' if rate >= 50_000 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
