"""The target catalog (catalog.toml) and CompilerOptions parsing."""
from modelkiln.targets.catalog import Target, Unsupported, resolve
from modelkiln.targets.options import CompilerOptions, parse_compiler_options

__all__ = ["CompilerOptions", "Target", "Unsupported", "parse_compiler_options", "resolve"]
