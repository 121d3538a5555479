"""Serve config; the model lives in slmkit.schema.serve (attached to BuildConfig as `serve:`)."""

from slmkit.schema.serve import ServeConfig

__all__ = ["ServeConfig"]
