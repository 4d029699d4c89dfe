"""Precision chosen by the machine: bf16-mixed only where bf16 matmuls are native (on a CPU
without AVX512-BF16/AMX autocast emulates bf16 and runs slower than fp32)."""
import torch

from modules.common.devices import mixed_precision, native_bf16

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbugs\t\t: spectre_v1\n"


def _cpuinfo(tmp_path, extra: str) -> str:
    p = tmp_path / f"cpuinfo_{extra or 'none'}"
    p.write_text(FLAGS.format(extra=extra))
    return str(p)


def test_cpu_flags_decide_the_precision(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mixed_precision("cpu", _cpuinfo(tmp_path, "avx512_bf16")) == "bf16-mixed"
    assert mixed_precision("auto", _cpuinfo(tmp_path, "amx_bf16 amx_tile")) == "bf16-mixed"
    assert mixed_precision("cpu", _cpuinfo(tmp_path, "")) == "32-true"
    # a flag named like the wanted one is not it, and a missing cpuinfo (macOS) means fp32
    assert not native_bf16("cpu", _cpuinfo(tmp_path, "avx512_bf16x"))
    assert mixed_precision("cpu", str(tmp_path / "absent")) == "32-true"


def test_cuda_decides_by_its_own_bf16_support(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert mixed_precision("auto", _cpuinfo(tmp_path, "avx512_bf16")) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert mixed_precision("gpu", _cpuinfo(tmp_path, "")) == "bf16-mixed"
