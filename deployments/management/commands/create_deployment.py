from __future__ import annotations

import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from console.audit import Actor
from console.models import Workspace
from deployments.examples import target_for
from deployments.imports import deployments_import, server_models
from deployments.services import deployment_create, replica_add

OPTION_FOR = {
    "name": "--name",
    "model_id": "--model",
    "upstream_base_url": "--upstream-url",
    "base_url": "--upstream-url",
    "weight": "--upstream-url #weight",
    "upstream_model": "--upstream-model",
    "input_per_million": "--input-price",
    "output_per_million": "--output-price",
    "currency": "--currency",
    "tokenizer_path": "--tokenizer",
}


class Command(BaseCommand):
    help = "Create a deployment backed by an OpenAI-compatible endpoint. Prints what it made; the deployment id is the last line."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", required=True, metavar="SLUG", help="Workspace that owns the deployment.")
        parser.add_argument("--name", help="Required unless --from-server.")
        parser.add_argument("--model", metavar="MODEL_ID", help="The model id clients send. Required unless --from-server.")
        parser.add_argument(
            "--from-server",
            metavar="URL",
            help="Import from a model server (vLLM, SGLang, llama.cpp, Ollama): read its /v1/models and make a deployment "
            "per model, or add the server as a replica of the deployment already serving that upstream model.",
        )
        parser.add_argument("--only", action="append", default=[], metavar="MODEL", help="With --from-server: import just these models.")
        parser.add_argument(
            "--upstream-url",
            required=False,
            action="append",
            metavar="URL[#weight=N]",
            help="OpenAI-compatible base URL, e.g. http://127.0.0.1:9000/v1. Give it once per replica; "
            "a #weight=N suffix sets that replica's share of traffic (default 1).",
        )
        parser.add_argument("--upstream-model", default="", metavar="NAME", help="Model name sent upstream (default: the model id).")
        parser.add_argument(
            "--upstream-key-env",
            default="",
            metavar="VAR",
            help="Name of an environment variable holding the upstream API key (never pass the key itself).",
        )
        parser.add_argument("--input-price", default="0", metavar="X", help="Price per 1M input tokens.")
        parser.add_argument("--output-price", default="0", metavar="Y", help="Price per 1M output tokens.")
        parser.add_argument("--currency", default="USD")
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--kind",
            default="chat",
            choices=["chat", "embedding", "rerank"],
            help="What the model does: chat (default), embedding (input price only) or rerank.",
        )
        parser.add_argument(
            "--tokenizer",
            default="",
            metavar="PATH",
            help="Absolute path to the model's tokenizer.json; the gateway counts prompt tokens with it (default: tiktoken cl100k_base).",
        )
        parser.add_argument(
            "--responses-passthrough",
            action="store_true",
            help="The upstream serves /v1/responses itself: pass Responses calls through (chat models).",
        )

    def handle(
        self,
        *args,
        workspace,
        name,
        model,
        upstream_url,
        upstream_model,
        upstream_key_env,
        input_price,
        output_price,
        currency,
        description,
        kind="chat",
        responses_passthrough=False,
        tokenizer="",
        **options,
    ):
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise CommandError(f"No workspace with slug {workspace!r}.")
        upstream_key = ""
        if upstream_key_env:
            upstream_key = os.environ.get(upstream_key_env, "")
            if not upstream_key:
                raise CommandError(f"The environment variable {upstream_key_env} is not set or empty.")
        if options.get("from_server"):
            return self.import_from_server(ws, options["from_server"], upstream_key, options.get("only") or [])
        missing = [flag for flag, value in (("--name", name), ("--model", model), ("--upstream-url", upstream_url)) if not value]
        if missing:
            raise CommandError(f"{', '.join(missing)} required (or --from-server URL).")
        try:
            replicas = [parse_replica_url(url) for url in upstream_url]
        except ValueError as exc:
            raise CommandError(f"--upstream-url: {exc}") from None
        (first_url, first_weight), more = replicas[0], replicas[1:]
        actor = Actor.system("manage.py create_deployment")
        try:
            with transaction.atomic():
                deployment = deployment_create(
                    workspace=ws,
                    actor=actor,
                    name=name,
                    model_id=model,
                    upstream_base_url=first_url,
                    upstream_weight=first_weight,
                    upstream_model=upstream_model,
                    upstream_api_key=upstream_key,
                    input_per_million=input_price,
                    output_per_million=output_price,
                    currency=currency,
                    description=description,
                    kind=kind,
                    responses_passthrough=responses_passthrough,
                    tokenizer_path=tokenizer,
                )
                for url, weight in more:
                    replica_add(deployment=deployment, actor=actor, base_url=url, weight=weight, api_key=upstream_key)
        except ValidationError as exc:
            raise CommandError(_problems(exc, with_options=True)) from None
        target = target_for(deployment=deployment, workspace=ws)
        self.stdout.write(f"Created deployment {deployment.name!r} in workspace {ws.slug}")
        self.stdout.write(f"  model id:  {deployment.model_id}")
        self.stdout.write(f"  kind:      {deployment.get_kind_display()}")
        for replica in deployment.replicas.order_by("id"):
            self.stdout.write(
                f"  upstream:  {replica.base_url} (weight {replica.weight})"
                + (f" (key from ${upstream_key_env}, ending …{replica.api_key_last4})" if upstream_key else "")
            )
        if deployment.tokenizer_path:
            self.stdout.write(f"  tokenizer: {deployment.tokenizer_path}")
        self.stdout.write(f"  price:     {input_price} in / {output_price} out {currency.upper()} per 1M tokens")
        self.stdout.write(f"  base URL:  {target.base_url}")
        self.stdout.write(f"  V1 path:   {target.v1_url}")
        self.stdout.write(str(deployment.public_id))

    def import_from_server(self, ws, url: str, api_key: str, only: list[str]) -> None:
        try:
            base_url, models = server_models(base_url=url, api_key=api_key)
            if only:
                unknown = [m for m in only if m not in models]
                if unknown:
                    raise CommandError(f"--only: the server does not list {', '.join(unknown)} (it lists {', '.join(models)}).")
                models = only
            done = deployments_import(
                workspace=ws, actor=Actor.system("manage.py create_deployment"), base_url=base_url, api_key=api_key, models=models
            )
        except ValidationError as exc:
            raise CommandError(_problems(exc)) from None
        self.stdout.write(f"{base_url} lists {len(models)} model(s):")
        for model, deployment, what in done:
            self.stdout.write(f"  {model}: {what} -> {deployment.model_id} ({deployment.public_id})")
        self.stdout.write(str(done[-1][1].public_id))


def _problems(exc: ValidationError, *, with_options: bool = False) -> str:
    """A service's ValidationError as one line, each field's messages led by its option (with_options)."""
    if not hasattr(exc, "error_dict"):
        return "; ".join(exc.messages)
    return "; ".join(
        f"{OPTION_FOR.get(field, field)}: {message}" if with_options else message
        for field, messages in exc.message_dict.items()
        for message in messages
    )


def parse_replica_url(value: str) -> tuple[str, int]:
    """`URL` or `URL#weight=N` (a base URL has no fragment of its own, so `#` is free to carry options)."""
    url, hash_sign, options = value.partition("#")
    if not hash_sign:
        return url, 1
    name, equals, number = options.partition("=")
    if name != "weight" or not equals or not number.isdigit():
        raise ValueError(f"{value!r}: the only option after # is weight=N, e.g. {url}#weight=2")
    return url, int(number)
