"""The machine line of the results tables (kept for the benchmark scripts' imports)."""
from gen_linker.hardware import machine_line

__all__ = ["machine_line"]
