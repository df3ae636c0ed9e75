"""Build step for the one compiled part: `paddle_qwen2.conversion._transpose`, the SIMD transpose the checkpoint
converter uses (metadata lives in pyproject.toml). It is optional: without a C compiler the install still succeeds
and the converter uses numpy instead (same bytes, about a third of the speed)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "paddle_qwen2.conversion._transpose",
            ["paddle_qwen2/conversion/_transpose.c"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
    ]
)
