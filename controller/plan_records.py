"""The plan's `spec.records`: where finished runs and drill verdicts are archived, for how long.

Owns the schema of the records store (a directory, or an S3 bucket with Object Lock) and
of the retention the plans ask for (records kept `keep`, six months by default; a passing
drill wanted every `drillEvery`, a year by default). Kept apart from `controller.plan`,
which includes `RecordsSpec` in the plan: the records modules (`controller.records`) and
the CLI read these models without the rest of the plan. Below the plan, it imports only
`controller.schema` and `controller.secrets`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from controller.schema import PositiveDuration, Strict
from controller.secrets import SecretRef


class LockMode(StrEnum):
    """S3 Object Lock mode of each record: COMPLIANCE (nobody, not even the bucket's
    owner, deletes or overwrites it before its retain-until date) or GOVERNANCE (a
    principal with s3:BypassGovernanceRetention may)."""

    COMPLIANCE = "COMPLIANCE"
    GOVERNANCE = "GOVERNANCE"


class DirectoryRecordsOptions(Strict):
    """Records as files under `path` (a mounted volume); each made read-only when written."""

    path: str = Field(min_length=1, description="directory the records are written under")


class S3RecordsOptions(Strict):
    """Records as objects in a bucket of any S3-compatible endpoint."""

    bucket: str = Field(min_length=3)
    prefix: str = ""
    endpoint_url: str | None = Field(None, alias="endpointUrl")
    region: str = "us-east-1"
    access_key_id: SecretRef | None = Field(None, alias="accessKeyId")
    secret_access_key: SecretRef | None = Field(None, alias="secretAccessKey")
    ca_bundle: str | None = Field(None, alias="caBundle",
                                  description="PEM file of the CAs the endpoint's TLS "
                                              "certificate is checked against")
    object_lock: LockMode | None = Field(
        LockMode.COMPLIANCE, alias="objectLock",
        description="Object Lock mode each record is retained with for `keep` (the bucket "
                    "must have Object Lock enabled); null: no lock, for a store that has "
                    "none")

    @model_validator(mode="after")
    def _both_keys(self) -> S3RecordsOptions:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both accessKeyId and secretAccessKey, or neither (to use "
                             "the default AWS credential chain)")
        return self


_OPTIONS: dict[str, type[Strict]] = {"directory": DirectoryRecordsOptions,
                                     "s3": S3RecordsOptions}


class RecordsStoreSpec(Strict):
    kind: Literal["directory", "s3"]
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options(self) -> RecordsStoreSpec:
        try:
            _OPTIONS[self.kind].model_validate(self.options)
        except ValidationError as err:
            said = "; ".join(
                ".".join(["options", *map(str, e["loc"])]) + ": "
                + e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise ValueError(f"store ({self.kind}): {said}") from None
        return self

    def directory(self) -> DirectoryRecordsOptions:
        return DirectoryRecordsOptions.model_validate(self.options)

    def s3(self) -> S3RecordsOptions:
        return S3RecordsOptions.model_validate(self.options)


class RecordsSpec(Strict):
    """Every finished run and drill verdict is archived to `store` and kept `keep`."""

    store: RecordsStoreSpec
    keep: PositiveDuration = Field(180 * 86400.0, description="each record is kept (locked "
                                   "where the store can) at least this long")
    drill_every: PositiveDuration = Field(
        365 * 86400.0, alias="drillEvery",
        description="readiness warns when no drill of the plan passed within this long")
