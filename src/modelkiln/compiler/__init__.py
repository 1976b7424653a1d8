"""The compiler: frontend -> backends -> verify -> select -> package (see pipeline.py)."""
from modelkiln.compiler.pipeline import CompileJob, compile_job, validate
from modelkiln.compiler.report import Report, render_text

__all__ = ["CompileJob", "Report", "compile_job", "render_text", "validate"]
