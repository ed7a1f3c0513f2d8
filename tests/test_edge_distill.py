"""Distillation of the edge toward the cloud on a tiny random-weight model: steps lower
the KL to the teacher with the INT4 quantizer in the loop, training resumes from its
checkpoint, the exported weights are plain fp32 again, bad options are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tandem.edge.distill import (CHECKPOINT, DistillSettings, batch_tensors, distill,
                                 kl_divergence)


def models(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():  # the student parts from the teacher, as a compressed edge does
        generator = torch.Generator().manual_seed(0)
        for parameter in student.model.layers.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return teacher, student


def data() -> list[tuple[list[int], int]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(3, 1000, (24,), generator=generator).tolist(), 8) for _ in range(8)]


def kl(teacher, student, rows) -> float:  # type: ignore[no-untyped-def]
    ids, attention, answer = batch_tensors(rows, 0)
    with torch.no_grad():
        return float(kl_divergence(student(input_ids=ids, attention_mask=attention).logits,
                                   teacher(input_ids=ids, attention_mask=attention).logits,
                                   answer))


def test_distillation_lowers_the_kl_to_the_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    teacher, student = models(tiny_model_dir)
    rows = data()
    before = kl(teacher, student, rows)
    report = distill(teacher, student, rows, 0, tmp_path,
                     DistillSettings(steps=6, batch=4, lr=1e-3), progress=False)
    assert kl(teacher, student, rows) < before
    assert report["steps"] == 6 and report["kl_last"] < report["kl_first"]
    # the quantizer is gone: the exported weights are plain fp32 tensors again
    assert not any("parametrizations" in name for name, _ in student.named_parameters())


def test_a_llama_cpp_format_in_the_loop_is_what_the_forward_sees(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    import gguf

    from tandem.edge.distill import attach_quantizer, decoder_linears, detach_quantizer
    from tandem.shared.gguf_quant import round_trip

    teacher, student = models(tiny_model_dir)
    q4_0, q8_0 = int(gguf.GGMLQuantizationType.Q4_0), int(gguf.GGMLQuantizationType.Q8_0)
    types = {f"{name}.weight": q8_0 if "down_proj" in name else q4_0
             for name in decoder_linears(student)}
    attach_quantizer(student, 32, types)
    for name, linear in decoder_linears(student).items():
        master = linear.parametrizations.weight.original.detach().numpy()
        served = round_trip(master, types[f"{name}.weight"])
        assert torch.equal(linear.weight.detach(), torch.from_numpy(served))
        assert not torch.equal(linear.weight.detach(), torch.from_numpy(master))
    detach_quantizer(student)

    rows = data()
    before = kl(teacher, student, rows)
    report = distill(teacher, student, rows, 0, tmp_path,
                     DistillSettings(steps=4, batch=4, lr=1e-3, gguf_type="Q4_0"),
                     progress=False, ggml_types=types)
    assert kl(teacher, student, rows) < before and report["kl_last"] < report["kl_first"]
    with pytest.raises(ValueError, match="needs the weights' ggml types"):
        distill(teacher, student, rows, 0, tmp_path / "other",
                DistillSettings(steps=1, gguf_type="Q4_0"), progress=False)


def test_training_resumes_from_its_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    teacher, student = models(tiny_model_dir)
    first = distill(teacher, student, data(), 0, tmp_path,
                    DistillSettings(steps=2, batch=4, lr=1e-3, checkpoint_every=1),
                    progress=False)
    assert first["steps"] == 2 and (tmp_path / CHECKPOINT).is_file()
    _, fresh = models(tiny_model_dir)
    second = distill(teacher, fresh, data(), 0, tmp_path,
                     DistillSettings(steps=3, batch=4, lr=1e-3, checkpoint_every=1),
                     progress=False)
    assert second["steps"] == 3 and second["kl_first"] == first["kl_first"]  # same history
    with pytest.raises(ValueError, match="other settings"):
        distill(teacher, models(tiny_model_dir)[1], data(), 0, tmp_path,
                DistillSettings(steps=4, batch=4, lr=5e-4), progress=False)


def test_answer_positions_are_the_ones_predicting_answer_tokens() -> None:
    ids, attention, answer = batch_tensors([([1, 2, 3, 4], 2), ([5, 6, 7], 1)], 0)
    assert ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 0]]
    assert attention.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert answer.tolist() == [[False, True, True, False], [True, True, False, False]]


def test_bad_distillation_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="kl must be one of"):
        DistillSettings(kl="sideways")
    with pytest.raises(ValueError, match="group must be one of"):
        DistillSettings(group=48)
    with pytest.raises(ValueError, match="lr > 0"):
        DistillSettings(lr=0.0)
    with pytest.raises(ValueError, match="gguf_type must be one of"):
        DistillSettings(gguf_type="Q9_Z")
