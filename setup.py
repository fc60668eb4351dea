"""Build script: the package metadata lives in pyproject.toml; this file adds the compiled kernels.

gradex._C holds the CPU kernels (csrc/cpu) whenever a C++ compiler is present, and the CUDA
kernels (csrc/cuda) whenever the CUDA toolkit and a CUDA build of torch are present as well; no
GPU is needed to build either. Without a compiler the install still succeeds, with a warning:
gradex then runs its pure-PyTorch reference path (and Triton, where a GPU is present).

Torch must already be installed (the extension is compiled against it), so install with
``pip install --no-build-isolation``, as the README does.

Environment:
    GRADEX_BUILD=0            build no extension (pure Python install)
    GRADEX_BUILD_CUDA=0       build the CPU kernels only
    CUDA_HOME                 the toolkit's root; found from nvcc on PATH or /usr/local/cuda*
                              (a toolkit of another CUDA major version than torch's is skipped,
                              with a warning: the CPU kernels are built alone)
    TORCH_CUDA_ARCH_LIST      GPU architectures; default without a visible GPU: 8.0;9.0+PTX
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import warnings

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str) -> None:
    warnings.warn(f"gradex: {message}", stacklevel=1)
    print(f"gradex setup: {message}", file=sys.stderr)


def _is_toolkit_root(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and os.access(
        os.path.join(path, "bin", "nvcc"), os.X_OK
    )


def _find_cuda_home() -> str | None:
    """The CUDA toolkit's root. torch guesses it as nvcc's grandparent folder, which is wrong
    where the nvcc on PATH is a wrapper script (e.g. /usr/local/bin/nvcc), so check candidates
    for the toolkit's own files instead."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    return next((path for path in candidates if path and _is_toolkit_root(path)), None)


def _toolkit_version(cuda_home: str) -> str | None:
    """The toolkit's CUDA version ('12.4'), as its nvcc reports it; None if it cannot say."""
    try:
        result = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", result.stdout)
    return f"{match[1]}.{match[2]}" if match else None


def _toolkit_matches_torch(cuda_home: str, torch_cuda: str) -> bool:
    """torch refuses to build CUDA code with a toolkit of another major version than its own
    (a RuntimeError that would fail the whole install): check first, and fall back to the CPU
    kernels with a warning instead."""
    version = _toolkit_version(cuda_home)
    if version is None:
        nvcc = os.path.join(cuda_home, "bin", "nvcc")
        _warn(f"could not read the CUDA version of {nvcc}: building the CPU kernels only")
        return False
    if version.split(".")[0] != torch_cuda.split(".")[0]:
        _warn(
            f"the CUDA toolkit at {cuda_home} is CUDA {version} but torch was built with CUDA "
            f"{torch_cuda}: building the CPU kernels only (set CUDA_HOME to a CUDA "
            f"{torch_cuda.split('.')[0]}.x toolkit for the CUDA kernels)"
        )
        return False
    return True


def _extensions():
    if os.environ.get("GRADEX_BUILD", "1") == "0":
        _warn("GRADEX_BUILD=0: no compiled kernels; the reference backend will be used")
        return [], {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _warn(
            f"no C++ compiler ({compiler!r} not found): installing without compiled kernels; "
            "the reference backend will be used"
        )
        return [], {}
    try:
        import torch
    except ImportError:
        _warn(
            "torch is not installed in the build environment, so the kernels cannot be compiled; "
            "install torch first and use `pip install --no-build-isolation`"
        )
        return [], {}

    cuda_home = _find_cuda_home() if torch.version.cuda else None
    build_cuda = (
        cuda_home is not None
        and os.environ.get("GRADEX_BUILD_CUDA", "1") != "0"
        and _toolkit_matches_torch(cuda_home, torch.version.cuda)
    )
    if build_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            # Ampere and Hopper, plus PTX that newer cards compile at load time.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    elif torch.version.cuda and cuda_home is None:
        _warn("no CUDA toolkit found (set CUDA_HOME): building the CPU kernels only")

    # pip runs this with the environment's python but not its bin/ on PATH, where ninja is.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/gradex.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    extension_class = CppExtension
    if build_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra_compile_args["nvcc"] = ["-O3"]
        extension_class = CUDAExtension
    extension = extension_class(
        name="gradex._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
