# Claude Code reads these variables; run `claude` in the same shell afterwards.
export ANTHROPIC_BASE_URL={{ public_url }}
export ANTHROPIC_AUTH_TOKEN={{ key_value }}
export ANTHROPIC_MODEL={{ model }}
export ANTHROPIC_DEFAULT_HAIKU_MODEL={{ model }}
