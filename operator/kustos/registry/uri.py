"""``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``: the registry model URIs Kustos
serves (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "models:/"
# MLflow allows most characters in a registered model's name; Kustos takes the ones that
# survive a URL query unquoted and cannot be confused with the URI's own separators.
_NAME = r"[A-Za-z0-9][-_.A-Za-z0-9 ]*"
_ALIAS = r"[A-Za-z_][-_A-Za-z0-9]*"
_ALIAS_URI = re.compile(rf"^models:/(?P<name>{_NAME})@(?P<alias>{_ALIAS})$")
_VERSION_URI = re.compile(rf"^models:/(?P<name>{_NAME})/(?P<version>[1-9][0-9]*)$")
# For the CRD schema: either form, nothing else after models:/.
MODELS_URI_PATTERN = (r"^models:/[A-Za-z0-9][-_.A-Za-z0-9 ]*"
                      r"(@[A-Za-z_][-_A-Za-z0-9]*|/[1-9][0-9]*)$")


class InvalidModelUri(ValueError):
    """Not a registry URI Kustos understands; the message says which form is expected."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model and either an alias or a version."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else \
            f"{SCHEME}{self.name}/{self.version}"


def is_registry_uri(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(SCHEME)


def parse(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ModelRef; InvalidModelUri else."""
    if not is_registry_uri(uri):
        raise InvalidModelUri(f"{uri!r} is not a registry URI (expected models:/NAME@ALIAS "
                              "or models:/NAME/VERSION)")
    if m := _ALIAS_URI.match(uri):
        return ModelRef(m["name"], alias=m["alias"])
    if m := _VERSION_URI.match(uri):
        return ModelRef(m["name"], version=m["version"])
    rest = uri[len(SCHEME):]
    tail = rest.rsplit("/", 1)[-1] if "/" in rest and "@" not in rest else ""
    if not rest:
        hint = "the model name is missing"
    elif rest.startswith("/"):
        hint = "write models:/NAME, with one slash (a models:// host is not supported)"
    elif rest.endswith(("@", "/")):
        hint = "the alias or version after the name is missing"
    elif "@" not in rest and "/" not in rest:
        hint = "name an alias (@ALIAS) or a version (/VERSION)"
    elif "/" in rest and "@" not in rest and not (tail.isdigit() and int(tail) > 0):
        hint = "a version is a positive integer; aliases follow @"
    else:
        hint = ("a name is letters, digits, '-', '_', '.', ' '; an alias starts with a "
                "letter or '_'")
    raise InvalidModelUri(f"{uri!r}: {hint} (expected models:/NAME@ALIAS or "
                          "models:/NAME/VERSION)")
