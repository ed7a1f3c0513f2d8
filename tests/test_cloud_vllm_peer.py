"""vLLM beside the built-in engine, without vLLM installed: `tandem bench cloud`'s Verify
rounds accept the engine's own greedy draft, the peer ratios point the same way for rates
and latencies, vLLM gets a model folder it can load, and a missing vLLM is a clear error
(the bench, before any measuring; `tandem serve cloud --engine vllm`, at once), and the
vLLM engine's Load estimate queues behind full batches. The peer
itself runs where scripts/install-vllm.sh has installed it (skipped otherwise); the engine's
real-model tests are in test_cloud_vllm_engine.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.cloud import bench
from tandem.cloud.peers import vllm_peer as vllm


def test_verify_rounds_accept_the_engines_own_greedy_draft(tiny_model_dir: Path) -> None:
    from tandem.cloud.config import CloudConfig
    from tandem.cloud.server import build_engine
    from tandem.shared.model_loader import load_causal_lm
    from tandem.shared.models import resolve_model
    from tandem.shared.sampling import SamplingParams

    model = load_causal_lm(resolve_model(str(tiny_model_dir)), "float32")
    engine = build_engine(CloudConfig(model=str(tiny_model_dir)), model, stop_token_ids=[])
    prefix = list(range(10, 60))

    async def measure() -> tuple[dict, list[int], int]:
        figures, draft = await bench.verify_ms(engine, prefix, repeats=2)
        result = await engine.verify("check", "s", prefix, draft, SamplingParams(max_tokens=1))
        return figures, draft, result.accepted

    try:
        figures, draft, accepted = asyncio.run(measure())
    finally:
        engine.close()
    assert len(draft) == bench.VERIFY_DRAFT_TOKENS and accepted == len(draft)
    assert figures["verify_ms"] > 0 and figures["verify_ms_new_session"] > 0
    assert figures["verify_prefix_tokens"] == len(prefix)


def test_peer_ratios_above_one_mean_the_built_in_engine_is_ahead() -> None:
    ours = {"decode_tok_s_b1": 30.0, "throughput_tok_s": {"4": 100.0, "16": 300.0},
            "ttft_cold_ms": 1000.0, "ttft_cached_ms": 50.0, "verify_ms": 40.0}
    peer = {"decode_tok_s_b1": 20.0, "throughput_tok_s": {"4": 200.0, "16": 300.0},
            "ttft_cold_ms": 1500.0, "ttft_cached_ms": 100.0, "verify_ms": 20.0}
    assert bench.peer_ratios(ours, peer) == {
        "decode_b1": 1.5, "throughput": {"4": 0.5, "16": 1.0},
        "ttft_cold": 1.5, "ttft_cached": 2.0, "verify": 0.5}


def test_rounds_keep_each_figures_best_and_every_run() -> None:
    """--rounds: rates their highest, latencies their lowest, runs joined, the rest as the
    first round had it; the bound follows the best bandwidth."""
    rounds = [{"decode_tok_s_b1": 40.0, "decode_tok_s_b1_runs": [38.0, 40.0],
               "throughput_tok_s": {"4": 150.0}, "ttft_cached_ms": 50.0, "verify_ms": 21.0,
               "bandwidth_gbps": 40.0, "weight_bytes_per_token": 10**9, "kv_waste_pct": 6.0,
               "verify_draft_tokens": 8, "greedy_identical": True,
               "matmul_kernels": {"rows": [1, 9], "native_ms": [16.0, 19.0]}},
              {"decode_tok_s_b1": 45.0, "decode_tok_s_b1_runs": [45.0, 41.0],
               "throughput_tok_s": {"4": 140.0}, "ttft_cached_ms": 45.0, "verify_ms": 22.0,
               "bandwidth_gbps": 50.0, "weight_bytes_per_token": 10**9, "kv_waste_pct": 5.0,
               "verify_draft_tokens": 8, "greedy_identical": False,
               "matmul_kernels": {"rows": [1, 9], "native_ms": [15.0, 18.0]}}]
    merged = bench.best_of(rounds)
    assert merged["decode_tok_s_b1"] == 45.0 and merged["throughput_tok_s"] == {"4": 150.0}
    assert merged["decode_tok_s_b1_runs"] == [38.0, 40.0, 45.0, 41.0]
    assert merged["ttft_cached_ms"] == 45.0 and merged["verify_ms"] == 21.0
    assert merged["kv_waste_pct"] == 5.0 and merged["bound_tok_s"] == 50.0
    assert merged["verify_draft_tokens"] == 8 and merged["greedy_identical"] is True
    assert merged["matmul_kernels"] == rounds[0]["matmul_kernels"]


def test_vllm_gets_weights_config_and_tokenizer_in_one_folder() -> None:
    from transformers import AutoConfig, AutoTokenizer

    from tandem.shared.models import DEFAULT_MODEL, resolve_model

    folder = vllm.model_folder(resolve_model(DEFAULT_MODEL))
    assert (folder / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    assert AutoTokenizer.from_pretrained(folder).encode("Hello") != []


def test_a_missing_vllm_is_a_clear_error_before_measuring(tmp_path: Path) -> None:
    # Its own process: the bench sets OpenMP's wait policy before torch loads.
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tandem.shared.cli.main", "bench", "cloud",
                           "--peer", "vllm", "--peer-python", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - started < 60  # no measuring began
    assert "install it with scripts/install-vllm.sh" in done.stderr


def installed_vllm() -> Path | None:
    try:
        return vllm.peer_python(None)
    except vllm.PeerUnavailable:
        return None


def test_serving_on_vllm_without_vllm_is_a_clear_error(tmp_path: Path) -> None:
    import os

    from tandem.cloud.config import CloudConfig

    with pytest.raises(ValueError, match="engine must be one of"):
        CloudConfig(engine="tgi")
    done = subprocess.run([sys.executable, "-m", "tandem.shared.cli.main", "serve", "cloud",
                           "--engine", "vllm", "--port", "0"], capture_output=True, text=True,
                          timeout=120,
                          env={**os.environ, "TANDEM_VLLM_PYTHON": str(tmp_path / "none")})
    assert done.returncode == 2 and "scripts/install-vllm.sh" in done.stderr


def test_the_vllm_engines_wait_estimate_counts_the_full_batches_ahead() -> None:
    from tandem.cloud.vllm_engine import wait_for_slot

    assert wait_for_slot(in_flight=3, capacity=4, mean_request_s=2.0) == 0.0  # a slot is free
    assert wait_for_slot(in_flight=4, capacity=4, mean_request_s=2.0) == 2.0
    assert wait_for_slot(in_flight=7, capacity=4, mean_request_s=2.0) == 2.0
    assert wait_for_slot(in_flight=8, capacity=4, mean_request_s=2.0) == 4.0
    assert wait_for_slot(in_flight=8, capacity=4, mean_request_s=0.0) == 0.0  # nothing timed


VLLM_PYTHON = installed_vllm()


@pytest.mark.vllm
@pytest.mark.skipif(VLLM_PYTHON is None,
                    reason="vLLM is not installed (scripts/install-vllm.sh)")
def test_vllm_measures_the_same_workload(tmp_path: Path, smollm2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # vLLM's CPU attention has kernels for head sizes of 32 and up (not the tiny model's 16).
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2)).eval()
    model.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    prompt = list(range(10, 42))
    workload = {"model": str(tmp_path), "dtype": "float32", "block_size": vllm.BLOCK_SIZE,
                "max_num_seqs": 4, "max_model_len": 256, "decode_prompt": prompt,
                "decode_tokens": 8, "stream_prompts": {"4": [prompt] * 4}, "stream_tokens": 8,
                "repeats": 2, "ttft_cold": prompt * 3, "ttft_cached": prompt * 3 + [7],
                "verify_prefix": prompt, "verify_draft": [11, 12, 13]}
    peer = vllm.measure(VLLM_PYTHON, workload, threads=2, timeout_s=900)

    expected = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8,
                              do_sample=False)[0, len(prompt):].tolist()
    assert peer["greedy_tokens"] == expected  # the same weights, loaded the same way
    assert peer["decode_tok_s_b1"] > 0 and set(peer["throughput_tok_s"]) == {"4"}
    assert peer["verify_ms"] > 0 and peer["ttft_cached_ms"] > 0
    # A cold and a cached TTFT each repeat (the prefix cache emptied before each pair).
    assert len(peer["ttft_cold_ms_runs"]) == len(peer["ttft_cached_ms_runs"]) == 2
