"""`ModelRef`: which registered model version a command means, as people write it.

`churn_model@production` (an alias), `churn_model/3` (a version), `runs:/<run id>` or a bare
32-character run id (the version registered from that run), or a bare name (its
`production`). Resolution asks the registry, so an alias means where it points now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ray_app import registry

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ModelRef:
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    run_id: str | None = None

    @classmethod
    def parse(cls, text: str, default_alias: str = registry.PRODUCTION) -> ModelRef:
        text = text.strip()
        if text.startswith("runs:/"):
            return cls(run_id=text.removeprefix("runs:/").strip("/").split("/")[0])
        if _RUN_ID.match(text):
            return cls(run_id=text)
        if "@" in text:
            name, alias = text.split("@", 1)
            return cls._checked(name, alias=alias)
        if "/" in text:
            name, version = text.rsplit("/", 1)
            if not version.isdigit():
                raise ValueError(f"{text!r}: a version is a number, as in {name}/3")
            return cls._checked(name, version=version)
        return cls._checked(text, alias=default_alias)

    @classmethod
    def _checked(cls, name: str, **kwargs: str) -> ModelRef:
        if not name or not all(kwargs.values()):
            raise ValueError(
                "a model is name@alias, name/version, runs:/<run id> or a run id; "
                f"got name {name!r} {kwargs}"
            )
        return cls(name=name, **kwargs)

    def resolve(self) -> tuple[str, str]:
        """(name, version) as the registry has them now."""
        if self.version is not None and self.name is not None:
            return self.name, self.version
        if self.alias is not None and self.name is not None:
            return self.name, str(registry.version_for(self.name, self.alias).version)
        found = registry.versions_of_run(str(self.run_id), self.name)
        if not found:
            of = f" of {self.name}" if self.name else ""
            raise registry.RegistryError(f"run {self.run_id} has no registered version{of}")
        names = {v.name for v in found}
        if len(names) > 1:
            raise registry.RegistryError(
                f"run {self.run_id} registered versions of {sorted(names)}; name one"
            )
        return found[0].name, str(max(int(v.version) for v in found))

    def __str__(self) -> str:
        if self.run_id:
            return f"runs:/{self.run_id}"
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"
