"""Build of infinidepth and its one extension, infinidepth._C.

The extension holds the C++ (CPU) kernels always and the CUDA kernels whenever the installed
torch was built with CUDA and nvcc can be found. Install with

    pip install --no-build-isolation -e .

so that the build uses the torch already installed (an isolated build would download a second one).
"""

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

# torch guesses CUDA_HOME from the nvcc on PATH, which can be a wrapper whose lib64 is not the
# toolkit's; the standard location is the right answer whenever it exists.
if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
# Compile for the GPUs we target (Ampere, Hopper) unless the user says otherwise; all archs would
# take many minutes on a small machine.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).parent
CPU_SOURCES = ["csrc/module.cpp", "csrc/ops.cpp", "csrc/bilinear_gather_cpu.cpp", "csrc/fused_decode_cpu.cpp", "csrc/cpu_math.cpp", "csrc/inverse_cdf_cpu.cpp", "csrc/gs_composite_cpu.cpp", "csrc/outliers_cpu.cpp"]
CUDA_SOURCES = ["csrc/ops_cuda.cpp", "csrc/bilinear_gather_cuda.cu", "csrc/fused_decode_cuda.cu", "csrc/inverse_cdf_cuda.cu"]


def want_cuda() -> bool:
    if os.environ.get("INFINIDEPTH_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is not None


def extension():
    # No FP traps or errno: lets GCC vectorise the activations' exp/erf (csrc/cpu_math.cpp).
    cxx = ["-O3", "-fopenmp", "-Wno-psabi", "-fno-trapping-math", "-fno-math-errno"]
    if want_cuda():
        return CUDAExtension(
            "infinidepth._C",
            CPU_SOURCES + CUDA_SOURCES,
            define_macros=[("INFINIDEPTH_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("infinidepth._C", CPU_SOURCES, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    name="infinidepth",
    version="0.1.0",
    description="Arbitrary-resolution monocular depth as a neural implicit field, with fused kernels",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["infinidepth", "infinidepth.*"]) + ["infinidepth.kernels"],
    # Triton kernels live in kernels/ at the top of the repository but install inside the package,
    # so that no top-level module named `kernels` is ever created.
    package_dir={"infinidepth.kernels": "kernels"},
    package_data={"infinidepth": ["assets/*"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pillow",
        "imageio",
        "plyfile",
        "tqdm",
        "safetensors",
        "h5py",
        "OpenEXR",
        "matplotlib",
        "scipy",  # cKDTree for the k-nearest-neighbour spacing of infinidepth.sampling.uniformity
        "pyyaml",  # training configs (infinidepth train --config FILE.yaml)
        "imageio-ffmpeg",  # MP4 camera-path videos of infinidepth gs (ships its own ffmpeg binary)
        "gsplat",  # the CUDA Gaussian rasteriser for infinidepth gs on a GPU (imported only there)
    ],
    extras_require={
        # lpips: the reference LPIPS (GS head training's optional perceptual loss); torchvision builds its trunk
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ninja", "pybind11", "lpips", "torchvision"],
        "triton": ["triton"],
        "lpips": ["lpips", "torchvision"],
    },
    entry_points={"console_scripts": ["infinidepth=infinidepth.cli:main"]},
)
