"""Helpers of the serving tests: names, a random LoRA adapter, registering, configs, waiting for readiness."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.settings import Settings
from bhashaflow.modeling.loading import load_base
from bhashaflow.registry.store import Registry
from serving.app import create_app

REPO = Path(__file__).resolve().parents[2]
EN_HI = "eng_Latn-hin_Deva"
HI_EN = "hin_Deva-eng_Latn"
EN_BN = "eng_Latn-ben_Beng"  # configured, never promoted
TOKEN = "s3cret-token"
# Runs a test on both serving engines (it takes the `engine` fixture's place).
ENGINES = pytest.mark.parametrize("engine", ["torch", "ctranslate2"])


def make_adapter(base: str, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved the way training saves one."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    lm = load_base(base, languages=["eng_Latn", "hin_Deva"], device="cpu")
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=TaskType.SEQ_2_SEQ_LM, init_lora_weights=False
    )
    model = get_peft_model(lm.model, lora)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)
    return out


def register(
    registry: str, direction: str, adapter_dir: Path, base: str, *, revision: str | None = None, promote: bool = True
) -> str:
    """Register an adapter (and promote it); returns its version."""
    reg = Registry(registry)
    info = reg.register(
        direction,
        adapter_dir,
        base_model=base,
        base_revision=revision,
        data_manifest_sha256="0" * 64,
        config={"test": True},
        metrics={"chrf++": 1.0},
    )
    if promote:
        reg.promote(direction, info.version)
    return info.version


def serving_config(tmp_path: Path, base: str, registry: str, **serving: Any) -> PipelineConfig:
    return config_from_dict(
        {
            "directions": [EN_HI, HI_EN, EN_BN],
            "base_model": base,
            "registry": registry,
            "evaluation": {"max_new_tokens": 6},  # random weights rarely stop early: keep generation short
            "serving": {"episodes_db": str(tmp_path / "episodes.db"), **serving},
        }
    )


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < deadline:
        resp = client.get("/health", headers=headers)
        if resp.status_code == 401 and headers:
            headers = {}  # TOKEN is not a key of this service (an unknown key is refused): poll as anonymous
            continue
        body = resp.json()
        if body["status"] == "ready":
            assert resp.status_code == 200
            return dict(body)
        assert body["status"] == "loading", body
        time.sleep(0.05)
    raise AssertionError("the service never became ready")


Serve = Callable[..., TestClient]


class Clients:
    """Started apps (lifespan included) behind TestClients; `close()` stops them all."""

    def __init__(self) -> None:
        self._open: list[TestClient] = []

    def start(self, config: PipelineConfig, settings: Settings, *, wait: bool = True) -> TestClient:
        client = TestClient(create_app(config, settings), raise_server_exceptions=False)
        client.__enter__()
        self._open.append(client)
        if wait:
            wait_ready(client)
        return client

    def close(self) -> None:
        for client in self._open:
            client.__exit__(None, None, None)
