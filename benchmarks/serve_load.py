"""Serving throughput and tail latency of both engines, batched, against the torch engine one text at a time.

    .venv/bin/python benchmarks/serve_load.py                         # self-contained: a random tiny base
    .venv/bin/python benchmarks/serve_load.py --shape nllb-600m       # random weights in NLLB-600M's shape
    .venv/bin/python benchmarks/serve_load.py --config configs/demo.yaml   # a real run's promoted adapters

A real server process (`serving.app.run`, uvicorn) is started three times with the same model, adapter and
inputs (FLORES-200 dev sentences): the torch engine with `max_batch_size: 1` (one text at a time), the torch
engine batched (`serving.max_batch_size` as configured) and the ctranslate2 engine batched. Each is loaded by 1
client and then by 32 concurrent clients (each sends its requests one after another).

`--shape nllb-600m` serves a model in facebook/nllb-200-distilled-600M's exact shape (d_model 1024, 12+12 layers,
16 heads, ffn 4096, vocabulary 256,206) with random weights, whose embedding rows outside the tokenizer and of
`</s>` are zero, so every translation is exactly `--max-new-tokens` tokens of text (sources of 23-30 tokens).
Goals: NLLB-600M shape, 32 clients: ctranslate2 at least 8x the torch engine one at a time in tokens/s, p99 no
worse; demo shape, 32 clients: batched at least 5x one at a time in requests/s, p99 no worse.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bhashaflow.config import PipelineConfig, config_from_dict, load_config  # noqa: E402
from bhashaflow.core.languages import parse_direction  # noqa: E402
from bhashaflow.data.flores import read_flores  # noqa: E402

DIRECTION = "eng_Latn-hin_Deva"
NLLB_600M = {"d_model": 1024, "layers": 12, "heads": 16, "ffn_dim": 4096, "vocab_size": 256_206}
VARIANTS = (("torch", "one"), ("torch", "batched"), ("ctranslate2", "batched"))  # (engine, batching)
_RUN = (
    "import sys\n"
    "from bhashaflow.config import load_config\n"
    "from serving.app import run\n"
    "run(load_config(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))\n"
)


def build_demo_setup(workdir: Path, max_new_tokens: int) -> PipelineConfig:
    """An untrained base of builtin:tiny-seq2seq's shape, one random LoRA adapter, promoted in a fresh registry."""
    from bhashaflow.modeling.builtin import build_builtin, small_recipe

    name = "builtin:tiny-seq2seq"
    base = workdir / "base"
    langs = list(parse_direction(DIRECTION))
    build_builtin(
        name, languages=langs, flores_dir=str(ROOT / "data/flores200"), out_dir=base, recipe=small_recipe(name, steps=0)
    )
    return promote_random_adapter(workdir, base, max_new_tokens)


def build_nllb_setup(workdir: Path, max_new_tokens: int) -> PipelineConfig:
    """Random weights in NLLB-600M's shape whose every output is `max_new_tokens` tokens of text, and an adapter."""
    import torch
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    from bhashaflow.data.flores import read_flores as read_dev
    from bhashaflow.modeling.builtin import small_recipe, train_tokenizer

    langs = list(parse_direction(DIRECTION))
    tok = train_tokenizer(
        {lang: read_dev(str(ROOT / "data/flores200"), lang, "dev") for lang in langs},
        small_recipe("builtin:tiny-seq2seq"),
    )
    shape = NLLB_600M
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = M2M100Config(
        vocab_size=shape["vocab_size"],
        d_model=shape["d_model"],
        encoder_layers=shape["layers"],
        decoder_layers=shape["layers"],
        encoder_attention_heads=shape["heads"],
        decoder_attention_heads=shape["heads"],
        encoder_ffn_dim=shape["ffn_dim"],
        decoder_ffn_dim=shape["ffn_dim"],
        max_position_embeddings=1024,
        activation_function="relu",
        scale_embedding=True,
        decoder_start_token_id=tok.eos_token_id,
        dropout=0.1,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        tie_word_embeddings=True,
        **ids,
    )
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config)
    with torch.no_grad():
        # Zero rows score 0 against any state; random rows of the tokenizer's ~4,000 pieces score above it: every
        # step picks a piece of text, never </s> nor one of the ~252,000 ids no tokenizer piece has.
        shared = cast(torch.nn.Embedding, model.get_input_embeddings()).weight
        shared[len(tok) :] = 0
        shared[tok.eos_token_id] = 0
    model.generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, decoder_start_token_id=tok.eos_token_id, **ids
    )
    base = workdir / "base"
    model.save_pretrained(str(base), safe_serialization=True)
    tok.save_pretrained(str(base))
    del model
    return promote_random_adapter(workdir, base, max_new_tokens)


def promote_random_adapter(workdir: Path, base: Path, max_new_tokens: int) -> PipelineConfig:
    """A random LoRA adapter on every linear layer of `base`, promoted in a fresh registry; the config serving it."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from bhashaflow.modeling.loading import load_base
    from bhashaflow.registry.store import Registry

    langs = list(parse_direction(DIRECTION))
    lm = load_base(str(base), languages=langs, device="cpu")
    torch.manual_seed(0)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        task_type=TaskType.SEQ_2_SEQ_LM,
        init_lora_weights=False,
    )
    adapter = workdir / "adapter"
    get_peft_model(lm.model, lora).save_pretrained(str(adapter), safe_serialization=True)
    (adapter / "README.md").unlink(missing_ok=True)
    registry = Registry(str(workdir / "registry"))
    info = registry.register(
        DIRECTION,
        adapter,
        base_model=str(base),
        base_revision=None,
        data_manifest_sha256="0" * 64,
        config={},
        metrics={},
    )
    registry.promote(DIRECTION, info.version)
    del lm
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


async def load(
    url: str,
    direction: str,
    inputs: list[str],
    clients: int,
    per_client: int,
    texts: int,
    warmup: int,
    count_tokens: Callable[[list[str]], int],
) -> dict[str, Any]:
    src, tgt = parse_direction(direction)
    latencies: list[float] = []
    failures: dict[int, int] = {}
    tokens = 0

    async def client(c: int, http: httpx.AsyncClient, n: int) -> None:
        nonlocal tokens
        for r in range(n):
            k = (c * per_client + r) * texts
            body = {"texts": [inputs[(k + j) % len(inputs)] for j in range(texts)], "src_lang": src, "tgt_lang": tgt}
            started = time.perf_counter()
            resp = await http.post("/v1/translate", json=body)
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200:
                failures[resp.status_code] = failures.get(resp.status_code, 0) + 1
            else:
                tokens += count_tokens(resp.json()["translations"])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        await asyncio.gather(*(client(c, http, warmup) for c in range(min(4, clients))))
        latencies.clear()
        failures.clear()
        tokens = 0
        before = batch_stats(url)
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http, per_client) for c in range(clients)))
        wall = time.perf_counter() - started
    after = batch_stats(url)
    ordered = sorted(latencies)
    batches = after[1] - before[1]
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": failures,
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "mean_batch": (after[0] - before[0]) / batches if batches else 0.0,
    }


def token_counter(config: PipelineConfig, fixed_length: int | None) -> Callable[[list[str]], int]:
    """Output tokens of a request's translations: the fixed length of the NLLB-shape setup, else re-tokenized."""
    if fixed_length is not None:
        return lambda outputs: fixed_length * len(outputs)
    from transformers import AutoTokenizer

    from bhashaflow.modeling.loading import resolve_base

    tok = AutoTokenizer.from_pretrained(
        resolve_base(config.base_model, languages=config.languages, flores_dir=config.evaluation.flores_dir)
    )
    # +2: the target language tag and </s>, which the service does not return
    return lambda outputs: sum(len(tok(o, add_special_tokens=False)["input_ids"]) + 2 for o in outputs if o)


def pick_inputs(config: PipelineConfig, direction: str, shape: str) -> list[str]:
    """FLORES-200 dev sentences of the direction's source; for the NLLB shape those of 23-30 source tokens."""
    lines = read_flores(config.evaluation.flores_dir, parse_direction(direction)[0], "dev")
    if shape != "nllb-600m":
        return lines
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(config.base_model)
    return [line for line in lines if 23 <= len(tok(line, add_special_tokens=False)["input_ids"]) + 2 <= 30]


def serve_variant(
    config: PipelineConfig, workdir: Path, engine: str, batching: str, args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], str]:
    data = config.model_dump(mode="json")
    label = f"{engine}-{batching}"
    data["serving"].update(
        engine=engine,
        episodes_db=str(workdir / f"{label}.db"),
        queue_limit=max(config.serving.queue_limit, args.clients * args.texts),
        request_timeout_s=max(config.serving.request_timeout_s, 900.0),
    )
    if batching == "one":
        data["serving"]["max_batch_size"] = 1
    return start_server(PipelineConfig.model_validate(data), workdir, label, args.threads)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| engine | max_batch_size | clients | requests | failed | req/s | tokens/s | p50 ms | p99 ms | mean batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['max_batch_size']} | {r['clients']} | {r['requests']} | "
            f"{sum(r['failures'].values())} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.2f} |"
        )


def verdicts(rows: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """The goals' ratios at `clients` clients: ctranslate2 / torch one at a time (tokens/s), best batched / one."""
    at = {(r["engine"], r["batching"]): r for r in rows if r["clients"] == clients}
    one = at.get(("torch", "one"))
    out: dict[str, Any] = {}
    if one is None:
        return out
    ct2 = at.get(("ctranslate2", "batched"))
    if ct2 is not None:
        out["ct2_vs_torch_one_tokens"] = ct2["tokens_per_s"] / one["tokens_per_s"]
        out["ct2_p99_no_worse"] = ct2["p99_ms"] <= one["p99_ms"]
    for engine in ("torch", "ctranslate2"):
        batched = at.get((engine, "batched"))
        if batched is not None:
            out[f"{engine}_batched_vs_one_requests"] = batched["requests_per_s"] / one["requests_per_s"]
            out[f"{engine}_batched_p99_no_worse"] = batched["p99_ms"] <= one["p99_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="serve this pipeline config (its registry must hold promoted adapters)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (of --config or of the self-contained setup)",
    )
    parser.add_argument(
        "--shape",
        choices=["demo", "nllb-600m"],
        default="demo",
        help="the self-contained setup's base: builtin:tiny-seq2seq's shape, or NLLB-600M's",
    )
    parser.add_argument(
        "--engines",
        default="torch,ctranslate2",
        help="engines to compare (torch one at a time always runs: it is the baseline)",
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--requests", type=int, help="requests per client at --clients clients (default 16; nllb-600m: 1)"
    )
    parser.add_argument("--single-requests", type=int, help="requests of the lone client (default 16; nllb-600m: 3)")
    parser.add_argument("--texts", type=int, default=1, help="texts per request")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generation length of the self-contained setup")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads in the server (on a busy CPU, 1 avoids oversubscription)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    nllb = args.shape == "nllb-600m" and not args.config
    requests = args.requests or (1 if nllb else 16)
    single = args.single_requests or (3 if nllb else 16)
    warmup = 1 if nllb else 2
    engines = {e.strip() for e in args.engines.split(",")}
    variants = [(e, b) for e, b in VARIANTS if e in engines or (e, b) == ("torch", "one")]

    with tempfile.TemporaryDirectory(prefix="bhashaflow-serve-bench-") as tmp:
        workdir = Path(tmp)
        os.environ["BHASHAFLOW_CACHE_DIR"] = str(workdir / "cache")  # the servers' converted models, removed after
        if args.config:
            config = load_config(args.config, args.set)
        elif nllb:
            print("building the NLLB-600M-shaped setup (random weights, one LoRA adapter)...", flush=True)
            config = build_nllb_setup(workdir, args.max_new_tokens)
        else:
            print("building the self-contained setup (random tiny base, one LoRA adapter)...", flush=True)
            config = build_demo_setup(workdir, args.max_new_tokens)
        if args.set and not args.config:  # the self-contained setups take overrides too (serving.max_batch_size=32)
            config = config_from_dict(config.model_dump(mode="json"), args.set)
        count_tokens = token_counter(config, args.max_new_tokens if nllb else None)
        inputs: list[str] = []
        rows: list[dict[str, Any]] = []
        for engine, batching in variants:
            proc, url = serve_variant(config, workdir, engine, batching, args)
            try:
                served = [a for a in httpx.get(f"{url}/v1/adapters", timeout=10).json()["adapters"] if a["version"]]
                if not served:
                    raise SystemExit("no direction has a promoted adapter; promote one first")
                direction = served[0]["direction"]
                if served[0].get("engine", engine) != engine:
                    print(f"  note: {direction} is served by {served[0]['engine']} (see the server log)")
                if not inputs:
                    inputs = pick_inputs(config, direction, args.shape if not args.config else "demo")
                max_batch = 1 if batching == "one" else config.serving.max_batch_size
                for clients, per_client in ((1, single), (args.clients, requests)):
                    print(
                        f"{engine} max_batch_size={max_batch}: {clients} client(s) x {per_client} requests of "
                        f"{args.texts} text(s), {direction} {served[0]['version']}",
                        flush=True,
                    )
                    figures = asyncio.run(
                        load(
                            url,
                            direction,
                            inputs,
                            clients,
                            per_client,
                            args.texts,
                            min(warmup, per_client),
                            count_tokens,
                        )
                    )
                    rows.append({"engine": engine, "batching": batching, "max_batch_size": max_batch, **figures})
            finally:
                stop_server(proc)

    print_table(rows)
    goals = verdicts(rows, args.clients)
    ct2 = goals.get("ct2_vs_torch_one_tokens")
    if ct2 is not None:
        print(
            f"\nctranslate2 batched vs torch one at a time, {args.clients} clients: {ct2:.1f}x tokens/s "
            f"(goal on the NLLB-600M shape >= 8x: {'met' if ct2 >= 8 else 'NOT met'}); p99 no worse: "
            f"{'met' if goals['ct2_p99_no_worse'] else 'NOT met'}"
        )
    for engine in ("torch", "ctranslate2"):
        ratio = goals.get(f"{engine}_batched_vs_one_requests")
        if ratio is not None:
            print(
                f"{engine} batched vs one at a time, {args.clients} clients: {ratio:.1f}x requests/s (goal on the "
                f"demo shape >= 5x: {'met' if ratio >= 5 else 'NOT met'}); p99 no worse: "
                f"{'met' if goals[f'{engine}_batched_p99_no_worse'] else 'NOT met'}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "rows": rows, "goals": goals}, indent=1))


if __name__ == "__main__":
    main()
