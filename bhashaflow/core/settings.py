"""Secrets and endpoints, read from the environment (and a `.env` file) in one place."""

from __future__ import annotations

import os
import re
import socket

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Settings(BaseSettings):
    """Credentials and endpoints; `os.environ` is read nowhere else in bhashaflow."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    aws_access_key_id: str | None = Field(
        None, validation_alias=AliasChoices("BHASHAFLOW_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BHASHAFLOW_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    aws_session_token: SecretStr | None = Field(None, validation_alias=AliasChoices("AWS_SESSION_TOKEN"))
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("BHASHAFLOW_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    )
    hf_token: SecretStr | None = Field(None, validation_alias=AliasChoices("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))
    hf_hub_offline: bool = Field(False, validation_alias=AliasChoices("HF_HUB_OFFLINE"))
    hf_endpoint: str = Field("https://huggingface.co", validation_alias=AliasChoices("HF_ENDPOINT"))
    qdrant_url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL"))
    qdrant_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("QDRANT_API_KEY"))
    api_token: SecretStr | None = Field(None, validation_alias=AliasChoices("BHASHAFLOW_API_TOKEN"))
    api_keys: str | None = Field(
        None,
        validation_alias=AliasChoices("BHASHAFLOW_API_KEYS"),
        description="API clients as JSON or YAML (name, scopes, sha256 of the key), like serving.api_keys_file.",
    )
    cache_dir: str = Field(
        "~/.cache/bhashaflow",
        validation_alias=AliasChoices("BHASHAFLOW_CACHE_DIR"),
        description="Where built-in base models are built and cached.",
    )
    host: str = Field(
        default_factory=socket.gethostname,
        validation_alias=AliasChoices("BHASHAFLOW_HOST"),
        description="This machine's name in a run's record of who trained, evaluated and promoted a direction "
        "(the pipeline JSON's produced_by); default: the hostname (a pod's name on Kubernetes).",
    )
    artifact_link_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        le=7 * 24 * 3600,
        validation_alias=AliasChoices("BHASHAFLOW_ARTIFACT_LINK_TTL_S"),
        description="How long the presigned S3 links in Prefect artifacts (adapters, charts) stay valid, in seconds "
        "(at most 7 days, S3's limit); 0 writes s3:// locations as text instead of signing links.",
    )

    @field_validator("aws_secret_access_key", "aws_session_token", "hf_token", "qdrant_api_key", "api_token")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # `BHASHAFLOW_API_TOKEN=` in a .env must not make the empty string a valid admin token.
        return None if value is not None and not value.get_secret_value().strip() else value

    @field_validator("api_keys")
    @classmethod
    def _blank_keys_are_unset(cls, value: str | None) -> str | None:
        return None if value is not None and not value.strip() else value

    def expand_env(self, text: str) -> str:
        """`text` with every `${NAME}` replaced by that environment variable; KeyError names a missing one.

        Lets a config name a credential (`https://user:${PAIRS_TOKEN}@host/x.jsonl`) instead of holding it:
        configs are stored and shown (Prefect keeps a flow run's parameters), the environment is not.
        """

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise KeyError(name)
            return os.environ[name]

        return _ENV_REF.sub(value, text)

    def storage_options_for(self, uri: str) -> dict[str, object] | None:
        """fsspec options for a workdir, registry or sink URL (None for local paths)."""
        return self.storage_options() if uri.startswith(("s3://", "s3a://")) else None

    def storage_options(self, endpoint_url: str | None = None) -> dict[str, object]:
        """fsspec options for s3:// URLs from these credentials."""
        opts: dict[str, object] = {}
        if self.aws_access_key_id:
            opts["key"] = self.aws_access_key_id
        if self.aws_secret_access_key:
            opts["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.aws_session_token:
            opts["token"] = self.aws_session_token.get_secret_value()
        client_kwargs: dict[str, str] = {}
        endpoint = endpoint_url or self.aws_endpoint_url
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if self.aws_region:
            client_kwargs["region_name"] = self.aws_region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


def get_settings() -> Settings:
    return Settings()
