"""The target catalog (catalog.toml) and CompilerOptions parsing."""
from modelkiln.targets.catalog import Gpu, Target, Unsupported, resolve
from modelkiln.targets.options import CompilerOptions, parse_compiler_options

__all__ = ["CompilerOptions", "Gpu", "Target", "Unsupported", "parse_compiler_options", "resolve"]
