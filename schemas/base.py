"""Versioned Parquet schemas: one place that stamps and checks the version.

Every table this project writes carries its name and version in the Arrow schema
metadata *and* in a `schema_version` column, so a reader can reject data it does not
understand whether it looks at a file footer or at a single row.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

NAME_KEY = b"minivlm.schema"
VERSION_KEY = b"minivlm.schema_version"


class SchemaVersionError(ValueError):
    """Data was written with a schema name or version this reader does not know."""


@dataclass(frozen=True)
class VersionedSchema:
    name: str
    version: int
    fields: tuple[pa.Field, ...]
    readable_versions: tuple[int, ...] = ()

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema(
            list(self.fields),
            metadata={NAME_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()},
        )

    def check(self, schema: pa.Schema, where: str = "") -> int:
        """Return the version of `schema`, or raise SchemaVersionError if unreadable."""
        meta = schema.metadata or {}
        name = meta.get(NAME_KEY, b"").decode()
        raw = meta.get(VERSION_KEY, b"").decode()
        at = f" in {where}" if where else ""
        if name != self.name:
            raise SchemaVersionError(
                f"expected a {self.name!r} table{at}, found schema name {name or '(none)'!r}"
            )
        try:
            version = int(raw)
        except ValueError as e:
            raise SchemaVersionError(f"{self.name} table{at} has no valid schema version ({raw!r})") from e
        if version not in (self.version, *self.readable_versions):
            known = ", ".join(str(v) for v in (self.version, *self.readable_versions))
            raise SchemaVersionError(
                f"{self.name} table{at} has schema version {version}; this release reads {known}. "
                "Upgrade the package to read it."
            )
        return version

    def validate_row(self, row: dict) -> dict:
        """Check a row against the schema by converting it; raises ValueError naming the field."""
        missing = [f.name for f in self.fields if f.name not in row and not f.nullable]
        if missing:
            raise ValueError(f"{self.name} row is missing required fields: {', '.join(missing)}")
        extra = sorted(set(row) - {f.name for f in self.fields})
        if extra:
            raise ValueError(f"{self.name} row has unknown fields: {', '.join(extra)}")
        for f in self.fields:
            value = row.get(f.name)
            if value is None:
                if not f.nullable:
                    raise ValueError(f"{self.name} row field {f.name!r} must not be null")
                continue
            try:
                pa.array([value], type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
                raise ValueError(f"{self.name} row field {f.name!r} does not fit {f.type}: {e}") from e
        return row

    def to_table(self, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist([self.validate_row(r) for r in rows], schema=self.arrow)
