"""The `bhashaflow` command line: runs the flows locally (ephemeral Prefect) and starts the service."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from bhashaflow.core.redact import redact_text  # stdlib only: safe before the defaults below are applied

if TYPE_CHECKING:  # the flows import Prefect and torch: only once a command runs
    from bhashaflow.data.ingest import IngestSummary
    from flows.evaluate_adapter import EvaluationResult

# Project defaults for Prefect and torch, applied before they are imported; the user's environment wins.
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "DO_NOT_TRACK": "1",  # no SDK usage telemetry (and no first-run notice on a terminal) unless the user wants it
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "TOKENIZERS_PARALLELISM": "false",
    # Idle OpenMP threads sleep instead of spinning: spinning threads slow torch badly on a shared small CPU.
    "OMP_WAIT_POLICY": "PASSIVE",
}


class _NoTraceback(logging.Filter):
    """Keeps Prefect's console logs to one line per failure; the CLI prints the reason itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def _quiet_prefect_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoTraceback())


def _load(args: argparse.Namespace) -> Any:
    from bhashaflow.config import load_config
    from bhashaflow.core.quiet import quiet_libraries

    quiet_libraries()  # before any model library is imported: its progress bars and unfixable warnings
    return load_config(args.config, args.set)


def _watched(args: argparse.Namespace) -> Any:
    """Progress bars on a terminal, periodic log lines in a pipe, errors only with --quiet (flows/watch.py)."""
    from flows.watch import watched

    _quiet_prefect_tracebacks()
    return watched(quiet=args.quiet)


Result = TypeVar("Result", bound=Mapping[str, Any])  # a command's `--json` object (a flow's typed result)


def _emit(args: argparse.Namespace, result: Result, human: Callable[[Result], str]) -> None:
    if args.json:
        print(human(result), file=sys.stderr)
        print(json.dumps(result, ensure_ascii=False, default=str))
    else:
        print(human(result))


def _ingest_table(result: IngestSummary) -> str:
    lines = [f"run {result['run_id']}: manifest {result['manifest']}"]
    lines.append(f"{'source':<20} {'read':>9} {'accepted':>9} {'dupes':>7} {'rejected':>9} {'skipped':>8}")
    for name, s in result["sources"].items():
        lines.append(
            f"{name:<20} {s['read']:>9} {s['accepted']:>9} {s['duplicates']:>7} {s['rejected']:>9} {s['skipped']:>8}"
        )
    lines.append(f"{'direction':<20} {'accepted':>9} {'dupes':>7} {'rejected':>9}")
    for d, p in result["pairs"].items():
        lines.append(f"{d:<20} {p['accepted']:>9} {p['duplicates']:>7} {p['rejected']:>9}")
    if result.get("rejected_by_reason"):
        reasons = ", ".join(f"{k}: {v}" for k, v in result["rejected_by_reason"].items())
        lines.append(f"rejected by reason: {reasons} (quarantine: {result['quarantine']['path']})")
    return "\n".join(lines)


def cmd_ingest(args: argparse.Namespace) -> int:
    config = _load(args)
    from flows.ingest_corpus import ingest_corpus

    with _watched(args):
        result = ingest_corpus(config)
    _emit(args, result, _ingest_table)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    config = _load(args)
    from bhashaflow.pipeline.report import format_table
    from flows.adapter_pipeline import adapter_pipeline

    with _watched(args):
        result = adapter_pipeline(config)
    _emit(args, result, lambda r: f"run {r['run_id']}: report {r['report']}\n{format_table(r['directions'])}")
    return 0


def cmd_feedback_loop(args: argparse.Namespace) -> int:
    config = _load(args)
    from flows.feedback_loop import feedback_loop, loop_table

    with _watched(args):
        result = feedback_loop(config)
    _emit(args, result, loop_table)
    return 0


def _evaluation_table(result: EvaluationResult) -> str:
    lines = [f"{'direction':<20} {'adapter':>9} {'chrF':>7} {'chrF++':>7} {'script':>7} {'n':>5}"]
    for d, r in result["directions"].items():
        lines.append(
            f"{d:<20} {r['version'] or 'none':>9} {r['chrf']:>7.2f} {r['chrf_pp']:>7.2f} {r['script_valid']:>7.0%} {r['n']:>5}"
        )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = _load(args)
    from flows.evaluate_adapter import evaluate_adapter

    with _watched(args):
        result = evaluate_adapter(config, args.adapter)
    _emit(args, result, _evaluation_table)
    return 0


def cmd_export_rl(args: argparse.Namespace) -> int:
    config = _load(args)
    from bhashaflow.config import RLExportFlowConfig
    from flows.export_rl_logs import export_rl_logs_flow

    with _watched(args):
        result = export_rl_logs_flow(RLExportFlowConfig.of(config))
    _emit(args, result, lambda r: f"exported {r['exported']} episodes in {len(r['parts'])} parts to {r['target']}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    config = _load(args)
    from bhashaflow.training.fit import check_fit, format_fit

    report = check_fit(config, steps=args.steps, device=args.device)
    _emit(args, report.to_dict(), lambda _: format_fit(report))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    from flows.preflight import format_checks, preflight

    checks = preflight(config)
    result = {"ok": all(c.ok for c in checks), "checks": [c.to_dict() for c in checks]}
    _emit(args, result, lambda _: format_checks(checks))
    return 0 if result["ok"] else 1


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    from serving.app import run

    run(config, host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    config = _load(args)
    from flows.demo import run_demo

    _quiet_prefect_tracebacks()
    result = run_demo(args.config, args.set, config, quiet=args.quiet)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bhashaflow",
        description="LoRA translation adapters for Indic languages: ingest, fine-tune, evaluate, promote, serve.",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a config field; the value is parsed as YAML (repeatable)",
        )
        p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
        p.add_argument(
            "--quiet", action="store_true", help="print only errors and the final table (no progress, no logs)"
        )
        p.set_defaults(func=func)
        return p

    add("ingest", cmd_ingest, "run the ingest-corpus flow")
    add(
        "check",
        cmd_check,
        "preflight: base model, sources' first rows, FLORES files, writable workdir and registry, "
        "device; exits 1 when any check fails",
    )
    add("pipeline", cmd_pipeline, "run the adapter-pipeline flow: ingest, fine-tune, evaluate, promote")
    evaluate = add("evaluate", cmd_evaluate, "score one adapter per direction on FLORES-200 (evaluate-adapter flow)")
    evaluate.add_argument(
        "--adapter",
        default="promoted",
        help="promoted (default), none (the base model alone), or a registry version such as v0002",
    )
    fit = add(
        "fit",
        cmd_fit,
        "measure a few worst-case training steps of CONFIG on this machine: memory, tokens/s, "
        "the largest batch_tokens that fits",
    )
    fit.add_argument("--steps", type=int, default=3, help="training steps to time (default 3; the first warms up)")
    fit.add_argument("--device", default=None, help="cpu or cuda[:n] (default: cuda when present)")
    add("demo", cmd_demo, "pipeline, table, a served translation with feedback, and an RL log export, offline")
    add(
        "feedback-loop",
        cmd_feedback_loop,
        "run the feedback-loop flow: export, ingest the RL logs, train (cpo), "
        "evaluate on FLORES and the held-out corrections, promote",
    )
    add("export-rl", cmd_export_rl, "run the export-rl-logs flow: served episodes and feedback to the rl_export target")
    serve = add("serve", cmd_serve, "serve the promoted adapters over HTTP (FastAPI)")
    serve.add_argument("--host", default=None, help="address to bind (default: serving.host)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default: serving.port)")
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("bhashaflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI's last line of defence: one readable line, then the traceback if asked
        # Connectors already mask credentials in URLs; this catches any a library put in its own message.
        message = redact_text(" ".join(str(exc).split())) or type(exc).__name__
        print(f"bhashaflow {args.command}: error: {message}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
