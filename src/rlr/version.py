"""The package's version, in a leaf module: what the package root reaches (lazily: `rlr.train`) can
read it without importing the root back."""

__version__ = "0.1.0"
