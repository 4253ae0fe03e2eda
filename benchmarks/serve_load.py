"""Serving throughput and tail latency with dynamic batching, against the same service with batching off.

    .venv/bin/python benchmarks/serve_load.py                         # self-contained: a random tiny base
    .venv/bin/python benchmarks/serve_load.py --config configs/demo.yaml   # a real run's promoted adapters

32 concurrent clients (each sends its requests one after another) hit a real server process
(`serving.app.run`, uvicorn) twice with the same model, adapters and inputs (FLORES-200 dev sentences):
first with `serving.max_batch_size` as configured, then with `max_batch_size: 1`.
Goals: at least 4x the requests/s with batching, and a p99 latency no worse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bhashaflow.config import PipelineConfig, config_from_dict, load_config  # noqa: E402
from bhashaflow.core.languages import parse_direction  # noqa: E402
from bhashaflow.data.flores import read_flores  # noqa: E402

DIRECTION = "eng_Latn-hin_Deva"
_RUN = (
    "import sys\n"
    "from bhashaflow.config import load_config\n"
    "from serving.app import run\n"
    "run(load_config(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))\n"
)


def build_demo_setup(workdir: Path, max_new_tokens: int) -> PipelineConfig:
    """An untrained base of builtin:tiny-seq2seq's shape, one random LoRA adapter, promoted in a fresh registry."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from bhashaflow.modeling.builtin import build_builtin, small_recipe
    from bhashaflow.modeling.loading import load_base
    from bhashaflow.registry.store import Registry

    name = "builtin:tiny-seq2seq"
    base = workdir / "base"
    langs = list(parse_direction(DIRECTION))
    build_builtin(name, languages=langs, flores_dir=str(ROOT / "data/flores200"), out_dir=base,
                  recipe=small_recipe(name, steps=0))
    lm = load_base(str(base), languages=langs, device="cpu")
    torch.manual_seed(0)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                      task_type=TaskType.SEQ_2_SEQ_LM, init_lora_weights=False)
    adapter = workdir / "adapter"
    get_peft_model(lm.model, lora).save_pretrained(str(adapter), safe_serialization=True)
    (adapter / "README.md").unlink(missing_ok=True)
    registry = Registry(str(workdir / "registry"))
    info = registry.register(DIRECTION, adapter, base_model=str(base), base_revision=None,
                             data_manifest_sha256="0" * 64, config={}, metrics={})
    registry.promote(DIRECTION, info.version)
    return config_from_dict(
        {
            "directions": [DIRECTION],
            "base_model": str(base),
            "registry": str(workdir / "registry"),
            "evaluation": {"max_new_tokens": max_new_tokens, "flores_dir": str(ROOT / "data/flores200")},
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    config: PipelineConfig, workdir: Path, label: str, threads: int | None
) -> tuple[subprocess.Popen[bytes], str]:
    path = workdir / f"{label}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = _free_port()
    log = (workdir / f"{label}.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(path), str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the {label} server exited; see {workdir / f'{label}.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the {label} server never became ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the batch size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return samples.get("bhashaflow_batch_size_sum", 0.0), samples.get("bhashaflow_batch_size_count", 0.0)


async def load(url: str, direction: str, inputs: list[str], clients: int, per_client: int, texts: int) -> dict[str, Any]:
    src, tgt = parse_direction(direction)
    latencies: list[float] = []
    failures: dict[int, int] = {}

    async def client(c: int, http: httpx.AsyncClient, n: int) -> None:
        for r in range(n):
            k = (c * per_client + r) * texts
            body = {"texts": [inputs[(k + j) % len(inputs)] for j in range(texts)], "src_lang": src, "tgt_lang": tgt}
            started = time.perf_counter()
            resp = await http.post("/v1/translate", json=body)
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200:
                failures[resp.status_code] = failures.get(resp.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(c, http, 2) for c in range(min(4, clients))))  # warm-up
        latencies.clear()
        failures.clear()
        before = batch_stats(url)
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http, per_client) for c in range(clients)))
        wall = time.perf_counter() - started
    after = batch_stats(url)
    ordered = sorted(latencies)
    batches = after[1] - before[1]
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "mean_batch": (after[0] - before[0]) / batches if batches else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="serve this pipeline config (its registry must hold promoted adapters)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16, help="requests per client")
    parser.add_argument("--texts", type=int, default=1, help="texts per request")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generation length of the self-contained setup")
    parser.add_argument("--threads", type=int, help="torch CPU threads in the server (on a busy CPU, 1 avoids "
                        "oversubscription)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bhashaflow-serve-bench-") as tmp:
        workdir = Path(tmp)
        if args.config:
            config = load_config(args.config, args.set)
        else:
            print("building the self-contained setup (random tiny base, one LoRA adapter)...", flush=True)
            config = build_demo_setup(workdir, args.max_new_tokens)
        batch_size = config.serving.max_batch_size
        inputs: list[str] = []
        results: dict[str, dict[str, Any]] = {}
        for label, max_batch in (("batched", batch_size), ("unbatched", 1)):
            data = config.model_dump(mode="json")
            data["serving"].update(max_batch_size=max_batch, episodes_db=str(workdir / f"{label}.db"),
                                   queue_limit=max(config.serving.queue_limit, args.clients * args.texts),
                                   request_timeout_s=max(config.serving.request_timeout_s, 300.0))
            variant = PipelineConfig.model_validate(data)
            proc, url = start_server(variant, workdir, label, args.threads)
            try:
                served = [a for a in httpx.get(f"{url}/v1/adapters", timeout=10).json()["adapters"] if a["version"]]
                if not served:
                    raise SystemExit("no direction has a promoted adapter; promote one first")
                direction = served[0]["direction"]
                if not inputs:
                    inputs = read_flores(config.evaluation.flores_dir, parse_direction(direction)[0], "dev")
                print(f"{label}: max_batch_size={max_batch}, {args.clients} clients x {args.requests} requests "
                      f"of {args.texts} text(s), {direction} {served[0]['version']}", flush=True)
                results[label] = {"max_batch_size": max_batch, "direction": direction,
                                  **asyncio.run(load(url, direction, inputs, args.clients, args.requests, args.texts))}
            finally:
                stop_server(proc)

    b, u = results["batched"], results["unbatched"]
    print(f"\n{'mode':<10} {'batch':>5} {'requests':>8} {'failed':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10}")
    for label, r in results.items():
        print(f"{label:<10} {r['max_batch_size']:>5} {r['requests']:>8} {sum(r['failures'].values()):>6} "
              f"{r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['mean_batch']:>10.2f}")
    ratio = b["requests_per_s"] / u["requests_per_s"]
    p99_ok = b["p99_ms"] <= u["p99_ms"]
    print(f"\nthroughput ratio: {ratio:.2f}x (goal >= 4x: {'met' if ratio >= 4 else 'NOT met'}); "
          f"p99 {b['p99_ms']:.0f} ms vs {u['p99_ms']:.0f} ms (goal no worse: {'met' if p99_ok else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "throughput_ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
