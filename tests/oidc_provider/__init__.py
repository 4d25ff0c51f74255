"""A real OpenID Connect provider for the SSO tests: a small Django project on django-oauth-toolkit,
started by the test as its own process on 127.0.0.1 (serve.py). It plays Keycloak / Entra ID /
Okta: a login page, authorization-code flow with PKCE, RS256 ID tokens, userinfo and a groups claim."""
