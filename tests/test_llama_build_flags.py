"""``scripts/llama-cmake-args``: the CMake arguments the README's install and ``.ci/run`` give llama-cpp-python's
source build — this CPU's vector instructions (AVX-512 with VNNI where it has them: 1.4-1.6x the prompt tokens/s of
the AVX2 build on this machine, README *Embedded local models*), never AMX (ggml's AMX kernels die with SIGILL in VMs
that report AMX without enabling it), and nothing the CPU lacks."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama-cmake-args"

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2"
SAPPHIRE_RAPIDS = (AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512vbmi avx512_bf16 avx_vnni"
                   " avx512_fp16 amx_bf16 amx_tile amx_int8")


@cache
def _script() -> ModuleType:
    loader = SourceFileLoader("llama_cmake_args", str(SCRIPT))  # a script without .py: loaded by path
    module = module_from_spec(spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def _cpuinfo(flags: str, tmp_path: Path) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n")
    return path


def test_avx512_cpu_gets_avx512_and_vnni_never_amx(tmp_path: Path) -> None:
    args = _script().cmake_args(_cpuinfo(SAPPHIRE_RAPIDS, tmp_path), machine="x86_64").split()
    assert args[0] == "-DGGML_NATIVE=OFF"
    for on in ("GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_VBMI", "GGML_AVX512_BF16", "GGML_AVX_VNNI"):
        assert f"-D{on}=ON" in args
    assert not [a for a in args if "AMX" in a and a.endswith("=ON")]


def test_avx2_cpu_keeps_the_portable_build(tmp_path: Path) -> None:
    args = _script().cmake_args(_cpuinfo(AVX2, tmp_path), machine="x86_64").split()
    assert args == ["-DGGML_NATIVE=OFF"]


def test_partial_avx512_is_not_enabled(tmp_path: Path) -> None:
    """GGML_AVX512 compiles for F, CD, VL, DQ and BW together: a CPU with only some of them (Xeon Phi) stays AVX2."""
    args = _script().cmake_args(_cpuinfo(AVX2 + " avx512f avx512cd avx512_vnni", tmp_path), machine="x86_64")
    assert "AVX512" not in args


def test_missing_baseline_instructions_are_turned_off(tmp_path: Path) -> None:
    args = _script().cmake_args(_cpuinfo("fpu sse sse2 ssse3 sse4_1 sse4_2 avx", tmp_path), machine="x86_64").split()
    for off in ("GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"):
        assert f"-D{off}=OFF" in args
    assert "-DGGML_AVX=OFF" not in args


def test_other_machines_get_llamas_own_default(tmp_path: Path) -> None:
    """Not x86-64 Linux (an ARM Mac, aarch64): nothing, so llama.cpp builds for the machine it is on."""
    assert _script().cmake_args(tmp_path / "missing", machine="arm64") == ""
    assert _script().cmake_args(_cpuinfo(SAPPHIRE_RAPIDS, tmp_path), machine="aarch64") == ""


def test_the_script_runs_on_this_machine() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == _script().cmake_args().strip()
    assert "AMX" not in out.replace("=OFF", "")


def test_the_readme_and_ci_install_with_these_flags() -> None:
    """The README's setup command and CI build llama-cpp-python the same way."""
    repo = SCRIPT.parents[1]
    command = 'CMAKE_ARGS="$(python scripts/llama-cmake-args)"'
    assert command in (repo / ".ci" / "run").read_text(encoding="utf-8")
    setup = (repo / "README.md").read_text(encoding="utf-8").split("## Setup", 1)[1].split("```", 2)[1]
    assert command in setup
