"""The data stage's config models (defined in slmkit.schema.data, attached to DataConfig), re-exported here."""

from slmkit.schema.data import *  # noqa: F403
