"""`tandem distill`: train the edge toward the cloud on the cloud's token distributions.

The edge is a compressed copy of the cloud's model, and compression is what costs it
agreement with the cloud (speculative acceptance, cascade quality). Distillation here is
quantization-aware: the student's decoder weights pass through the torch runtime's INT4
quantizer in every forward (group-wise, as `tandem compress` quantizes them) while the
gradient goes straight through to fp32 master weights (STE), and the loss is the KL
divergence between the cloud's and the student's next-token distributions over the answer
tokens of the shipped training prompts, answered by the cloud (forward KL, teacher ‖
student, or reverse, as MiniLLM). The trained weights are exported as a model folder and
through the compression pipeline with the same quantizer (recipe ``int4-noawq``: AWQ would
re-scale the weights the training fitted).

For an edge served by llama.cpp, ``gguf_type`` puts that format in the loop instead:
every decoder weight makes the round trip through the ggml type llama.cpp stores it in
at that setting (read from the source re-quantized once: Q3_K_M on SmolLM2 is Q4_0,
Q5_0 and Q4_K per tensor), quantized by ggml itself, so training sees the values the
served GGUF will hold.

Training is resumable: a checkpoint (weights, optimizer, step) is written every
``checkpoint_every`` steps and picked up by the next run with the same output folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from tandem.edge.quantize import INT4_GROUPS, dequantize_int4, quantize_int4
from tandem.shared.gguf_quant import GGUF_TYPES

CHECKPOINT = "checkpoint.pt"
KL_DIRECTIONS = ("forward", "reverse")


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 120
    batch: int = 4
    lr: float = 2e-5
    group: int = 32  # INT4 group size of the quantizer in the loop (and of the export)
    kl: str = "forward"
    gguf_type: str = ""  # a llama.cpp type in the loop instead of INT4 (gguf_quant.GGUF_TYPES)
    max_tokens: int = 128  # longest training sequence (prompt + answer)
    checkpoint_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kl not in KL_DIRECTIONS:
            raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {self.kl!r}")
        if self.gguf_type and self.gguf_type not in GGUF_TYPES:
            raise ValueError(f"gguf_type must be one of {sorted(GGUF_TYPES)}, got "
                             f"{self.gguf_type!r}")
        if self.group not in INT4_GROUPS:
            raise ValueError(f"group must be one of {INT4_GROUPS}, got {self.group}")
        if self.steps < 1 or self.batch < 1 or not self.lr > 0 or self.checkpoint_every < 1:
            raise ValueError("steps, batch and checkpoint_every must be >= 1 and lr > 0")


class Int4InTheLoop(torch.nn.Module):
    """A weight parametrization: the forward sees the INT4-quantized weight, the gradient
    reaches the fp32 weight unchanged (straight-through estimator)."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        quantized = dequantize_int4(*quantize_int4(weight.detach(), self.group))
        return weight + (quantized - weight).detach()


class GgufInTheLoop(torch.nn.Module):
    """The same, with the weight as llama.cpp serves it in one ggml type."""

    def __init__(self, ggml_type: int) -> None:
        super().__init__()
        self.ggml_type = ggml_type

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        from tandem.shared.gguf_quant import round_trip

        served = round_trip(weight.detach().numpy(), self.ggml_type)
        return weight + (torch.from_numpy(served).to(weight.dtype) - weight).detach()


def decoder_linears(model: Any) -> dict[str, torch.nn.Linear]:
    """Name -> module of every linear layer of the decoder blocks."""
    return {name: m for name, m in model.named_modules()
            if name.startswith("model.layers.") and isinstance(m, torch.nn.Linear)}


def attach_quantizer(model: Any, group: int, ggml_types: dict[str, int] | None = None) -> None:
    """INT4 of ``group`` in every linear's forward, or, given ``ggml_types`` (the weights'
    names -> ggml type), each weight's llama.cpp type."""
    for name, linear in decoder_linears(model).items():
        quantizer = (GgufInTheLoop(ggml_types[f"{name}.weight"]) if ggml_types
                     else Int4InTheLoop(group))
        parametrize.register_parametrization(linear, "weight", quantizer)


def detach_quantizer(model: Any) -> None:
    """Back to plain fp32 weights (the trained masters, not their quantized values)."""
    for linear in decoder_linears(model).values():
        parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)


def sequences(rows: list[dict[str, Any]], tokenizer: Any, max_tokens: int
              ) -> list[tuple[list[int], int]]:
    """(token ids, index of the first answer token) of each prompt + the cloud's answer."""
    from tandem.shared.prompting import chat_token_ids

    out = []
    for row in rows:
        prompt = chat_token_ids(tokenizer, [{"role": "user", "content": row["prompt"]}])
        answer = tokenizer.encode(row["cloud_text"], add_special_tokens=False)
        ids = (prompt + answer)[:max_tokens]
        if answer and len(prompt) < len(ids):
            out.append((ids, len(prompt)))
    return out


def batch_tensors(batch: list[tuple[list[int], int]], pad: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, answer mask: the positions whose next token is an answer
    token), right-padded."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad)
    attention = torch.zeros(len(batch), width, dtype=torch.long)
    answer = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, (tokens, start) in enumerate(batch):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        attention[row, :len(tokens)] = 1
        answer[row, start - 1:len(tokens) - 1] = True
    return ids, attention, answer


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  direction: str = "forward") -> torch.Tensor:
    """Mean over the masked positions of KL(teacher ‖ student) (forward) or
    KL(student ‖ teacher) (reverse); logits [B, T, V], mask [B, T]."""
    s, t = F.log_softmax(student[mask].float(), -1), F.log_softmax(teacher[mask].float(), -1)
    p, q = (t, s) if direction == "forward" else (s, t)
    return (p.exp() * (p - q)).sum(-1).mean()


def distill(teacher: Any, student: Any, data: list[tuple[list[int], int]], pad: int,
            out: Path, settings: DistillSettings, progress: bool = True,
            ggml_types: dict[str, int] | None = None) -> dict[str, Any]:
    """Train ``student`` (in place; its quantizer attached here: ``ggml_types`` when
    ``settings.gguf_type`` is set) toward ``teacher``; resumes from ``out``/checkpoint.pt.
    Returns the run's report."""
    from tqdm import tqdm

    if bool(settings.gguf_type) != bool(ggml_types):
        raise ValueError("a gguf_type in the loop needs the weights' ggml types, and only it")
    out.mkdir(parents=True, exist_ok=True)
    attach_quantizer(student, settings.group, ggml_types)
    student.train()
    teacher.eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    step, losses = _resume(out, student, optimizer, settings)
    started = time.perf_counter()
    order = torch.Generator().manual_seed(settings.seed)
    schedule = torch.cat([torch.randperm(len(data), generator=order)
                          for _ in range(math.ceil(settings.steps * settings.batch / len(data)))])
    with tqdm(total=settings.steps, initial=step, desc="distill", unit="step",
              disable=not progress) as bar:
        while step < settings.steps:
            picks = schedule[step * settings.batch:(step + 1) * settings.batch].tolist()
            ids, attention, answer = batch_tensors([data[i] for i in picks], pad)
            with torch.no_grad():
                target = teacher(input_ids=ids, attention_mask=attention).logits
            loss = kl_divergence(student(input_ids=ids, attention_mask=attention).logits,
                                 target, answer, settings.kl)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(round(float(loss.detach()), 5))
            bar.update(1)
            bar.set_postfix(kl=f"{losses[-1]:.4f}")
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                _save_checkpoint(out, student, optimizer, step, losses, settings)
    student.eval()
    detach_quantizer(student)
    return {"steps": step, "kl_first": losses[0] if losses else None,
            "kl_last": losses[-1] if losses else None,
            "kl_mean_first_10": _mean(losses[:10]), "kl_mean_last_10": _mean(losses[-10:]),
            "seconds_this_run": round(time.perf_counter() - started, 1),
            "settings": asdict(settings)}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def _save_checkpoint(out: Path, student: Any, optimizer: torch.optim.Optimizer, step: int,
                     losses: list[float], settings: DistillSettings) -> None:
    tmp = out / f"{CHECKPOINT}.tmp"
    torch.save({"model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "losses": losses, "settings": asdict(settings)}, tmp)
    tmp.replace(out / CHECKPOINT)  # a run killed mid-write keeps the last checkpoint


def _resume(out: Path, student: Any, optimizer: torch.optim.Optimizer,
            settings: DistillSettings) -> tuple[int, list[float]]:
    path = out / CHECKPOINT
    if not path.is_file():
        return 0, []
    state = torch.load(path, weights_only=False)
    saved = {k: v for k, v in state["settings"].items() if k not in ("steps",
                                                                     "checkpoint_every")}
    wanted = {k: v for k, v in asdict(settings).items() if k in saved}
    if saved != wanted:
        raise ValueError(f"{path} was trained with other settings ({saved}); use another "
                         "output folder or the same settings")
    student.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["losses"])


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
