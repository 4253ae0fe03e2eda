"""Does the real profile fit a small GPU? nllb-200-distilled-600M's exact architecture, 8-bit base + LoRA.

    python benchmarks/gpu_fit.py                    # CUDA when present, else CPU (peak RSS)
    python benchmarks/gpu_fit.py --steps 20 --batch-size 8

A model with facebook/nllb-200-distilled-600M's architecture (from a config built here: no hub, random
weights) is saved in fp16 by a child process, then this process trains it exactly as the real profile does:
`train_adapter` with quantization 8bit, paged 8-bit AdamW, gradient checkpointing and LoRA r 16 on the
default target modules, on FLORES-200 dev pairs. Reported: peak memory (CUDA allocator peak on a GPU,
process peak RSS on CPU) and training tokens/s. The target user has a 6 GB GPU.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads slow a tiny model
# by 10x or more. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

# facebook/nllb-200-distilled-600M's config.json, field by field.
NLLB_600M = {
    "vocab_size": 256206, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
    "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096, "max_position_embeddings": 1024,
    "activation_function": "relu", "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "scale_embedding": True, "init_std": 0.02, "pad_token_id": 1,
    "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2, "tie_word_embeddings": True,
}  # fmt: skip

_BUILD = """
import json, sys, torch
from transformers import M2M100Config, M2M100ForConditionalGeneration
from bhashaflow.builtin_bases import small_recipe, train_tokenizer, read_dev_text
torch.manual_seed(0)
model = M2M100ForConditionalGeneration(M2M100Config(**json.loads(sys.argv[1]))).half()
model.save_pretrained({out!r})
texts = read_dev_text({flores!r}, ["eng_Latn", "hin_Deva"])
# Any tokenizer with ids inside the vocabulary will do for memory and speed; this one is trained in seconds.
train_tokenizer(texts, small_recipe("builtin:tiny-seq2seq", vocab_size=8000)).save_pretrained({out!r})
print(sum(p.numel() for p in model.parameters()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--flores", default="data/flores200")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "nllb-600m-shaped"
        started = time.perf_counter()
        # A child builds and saves the fp32 model, so this process's peak memory is the training alone.
        code = _BUILD.format(out=str(base), flores=args.flores)
        built = subprocess.run([sys.executable, "-c", code, json.dumps(NLLB_600M)], check=True, capture_output=True, text=True)
        n_params = int(built.stdout.strip().splitlines()[-1])
        print(f"built a random nllb-200-distilled-600M-shaped model ({n_params / 1e6:.0f}M parameters) in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip

        from train_throughput import write_dev_shard  # this folder is on sys.path when run as a script

        from bhashaflow.config import config_from_dict
        from bhashaflow.modeling import load_base
        from bhashaflow.training import train_adapter

        shard = write_dev_shard(Path(args.flores), "eng_Latn-hin_Deva", Path(tmp) / "pairs.parquet")
        config = config_from_dict({
            "directions": ["eng_Latn-hin_Deva"], "base_model": str(base),
            "training": {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                         "checkpoint_every": args.steps, "quantization": "8bit", "optimizer": "paged_adamw_8bit",
                         "gradient_checkpointing": True, "learning_rate": 2e-4},
        })  # fmt: skip
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = psutil.Process().memory_info().rss / 2**30
        started = time.perf_counter()
        lm = load_base(str(base), languages=[], quantization="8bit")
        load_s = time.perf_counter() - started
        footprint = lm.model.get_memory_footprint() / 2**30
        result = train_adapter(config=config, direction="eng_Latn-hin_Deva", shard_paths=[shard],
                               out_dir=str(Path(tmp) / "run"), eval_texts={}, lm=lm)  # fmt: skip
        trainable = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
        print(f"8-bit base loaded in {load_s:.0f} s, weights {footprint:.2f} GiB; LoRA trainable {trainable / 1e6:.2f}M")
        print(f"{result.steps} steps, batch {args.batch_size}: {result.tokens_per_s:.0f} tokens/s, "
              f"final loss {result.final_loss:.3f}")  # fmt: skip
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"peak memory: {peak:.2f} GiB (CUDA allocator peak on {torch.cuda.get_device_name()}); "
                  f"6 GB GPU budget {'met' if peak < 5.5 else 'NOT met'}")  # fmt: skip
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
            # RSS counts the Python runtime and libraries too; only a CUDA run answers the 6 GB GPU question.
            print(f"peak memory: {peak:.2f} GiB process peak RSS on CPU (bitsandbytes CPU backend), "
                  f"{peak - rss_before:.2f} GiB above the process before loading the base")  # fmt: skip


if __name__ == "__main__":
    main()
