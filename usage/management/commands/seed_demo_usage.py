from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from deployments.models import Deployment
from usage.demo import DEMO_MODEL_ID, demo_traffic_seed


class Command(BaseCommand):
    help = "Seed a month of demo traffic on the demo deployment (make run), once: nothing happens when usage exists."

    def add_arguments(self, parser):
        parser.add_argument("--model", default=DEMO_MODEL_ID, help="Model id of the deployment to seed traffic on.")
        parser.add_argument("--days", type=int, default=30)

    def handle(self, *args, model: str, days: int, **options):
        deployment = Deployment.objects.select_related("workspace").filter(model_id=model).first()
        if deployment is None:
            raise CommandError(f"No deployment with model id {model!r}; run seed_demo first.")
        if not 1 <= days <= 400:
            raise CommandError("--days must be between 1 and 400.")
        result = demo_traffic_seed(deployment=deployment, days=days)
        if result.events:
            self.stdout.write(f"Demo traffic: {result.events} requests over {days} days by {', '.join(result.keys)}.")
        else:
            self.stdout.write("Demo traffic: usage already exists, nothing seeded.")
