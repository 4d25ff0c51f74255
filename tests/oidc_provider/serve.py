"""Start the test OpenID Connect provider: migrate, create its users and client, serve on 127.0.0.1.

    python -m tests.oidc_provider.serve --port N --data-dir DIR --redirect-uri URI --client-id ID --client-secret S \
        --user alice:password:alice@example.com:group1,group2 ...
"""

from __future__ import annotations

import argparse
import os
import socketserver
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        sys.stderr.write("idp: " + (format % args) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--user", action="append", default=[])
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pem = data_dir / "rsa.pem"
    if not pem.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.environ["OIDC_TEST_DATA_DIR"] = str(data_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.oidc_provider.settings"

    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0)
    for spec in args.user:
        username, password, email, groups = (spec.split(":") + [""])[:4]
        user, _ = User.objects.get_or_create(username=username, defaults={"email": email})
        user.set_password(password)
        user.email = email
        user.save()
        user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups.split(",") if g])
    Application.objects.update_or_create(
        client_id=args.client_id,
        defaults={
            "name": "Gatehouse",
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "client_secret": args.client_secret,
            "redirect_uris": args.redirect_uri,
            "algorithm": Application.RS256_ALGORITHM,
            "skip_authorization": True,
        },
    )
    server = make_server("127.0.0.1", args.port, get_wsgi_application(), server_class=_ThreadingServer, handler_class=_QuietHandler)
    print(f"ready http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
