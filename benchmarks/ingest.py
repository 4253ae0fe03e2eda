"""Ingestion throughput and memory: N and 4N synthetic pairs from local HTTP and S3 servers.

    .venv/bin/python benchmarks/ingest.py            # N = 1,000,000
    .venv/bin/python benchmarks/ingest.py --n 100000

Half the pairs are served over HTTP (a real http.server on 127.0.0.1), half from moto's S3 server;
each size runs in a fresh child process through the real connectors, validation and shard writing.
Goals: at least 50,000 records/s, and peak RSS at 4N within 20% of N.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def child(n: int, http_url: str, s3_uri: str, endpoint: str, workdir: str) -> None:
    """Ingest in this process and print one JSON line of figures."""
    from bhashaflow.config import PipelineConfig
    from bhashaflow.ingest import stage_source, write_shards
    from bhashaflow.settings import Settings
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
    start = time.perf_counter()
    staged = [
        stage_source(config, s, open_connector(s, settings, config.directions), config.run_uri())
        for s in config.sources
    ]
    manifest = write_shards(config, staged, config.run_uri())
    elapsed = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "read": manifest["totals"]["read"], "accepted": manifest["totals"]["accepted"],
                      "seconds": elapsed, "peak_rss_mb": rss_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, http_url, s3_uri, endpoint, workdir = args.child
        child(int(n), http_url, s3_uri, endpoint, workdir)
        return

    from servers import FaultyHTTPServer, S3Server

    results = []
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
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(n), http.url(f"pairs-{n}.jsonl.gz"),
                     f"s3://bench/lake-{n}/", s3.endpoint_url, str(root / f"runs-{n}")],
                    check=True, capture_output=True, text=True,
                )
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(figures)
                print(f"N={n:>9,}: {figures['read'] / figures['seconds']:>9,.0f} records/s, "
                      f"peak RSS {figures['peak_rss_mb']:.0f} MB ({figures['seconds']:.1f} s)", flush=True)
                (web / f"pairs-{n}.jsonl.gz").unlink()
        s3.stop()
    small, large = results
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    rate = min(r["read"] / r["seconds"] for r in results)
    print(f"peak RSS 4N/N = {ratio:.2f} (goal <= 1.20); slowest rate {rate:,.0f} records/s (goal >= 50,000)")


if __name__ == "__main__":
    main()
