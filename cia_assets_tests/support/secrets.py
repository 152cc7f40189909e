"""Secrets planted where a careless commit would put them, for the tests that show none of
them leaves this machine (the egress client, the teacher, the judge) or is stored (datasets)."""

from __future__ import annotations

SECRETS = {
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_R7b2Xk9QmV4tL1sN8wE3yU6iO0pA5zD2cF7h",
    "stripe": "sk_live_51HqLyjWDarjtT1zdp7dcXkLmPqRsTuVwXyZ",
    "password": "Tr0ub4dor&3-horse-battery",
    "entropy": "q8ZtV3mK1xR7pW2sL9nB4cF6hJ0dG5yA",
    "pem_body": "MIIEowIBAAKCAQEA7bq3Yk1J0pQ9x8VwZ2rT",
    # Bare values, as config files and shell environments hold them: no quotes, no known format.
    "yaml_password": "hunter2hunter2",
    "env_password": "s3cretValue99",
}
SECRET_FILES: dict[str, str | bytes | None] = {
    "payments/settings.py": (
        '"""Settings of the payments service."""\n'
        "\n"
        f'AWS_ACCESS_KEY_ID = "{SECRETS["aws"]}"\n'
        f'GITHUB_TOKEN = "{SECRETS["github"]}"\n'
        f'STRIPE_KEY = "{SECRETS["stripe"]}"\n'
        f'DB_PASSWORD = "{SECRETS["password"]}"\n'
        f'SIGNING_SALT = "{SECRETS["entropy"]}"\n'
        "\n"
        "\n"
        "def database_url(host):\n"
        '    """The connection URL for the ledger database."""\n'
        '    return f"postgres://ledger@{host}/ledger"\n'
    ),
    "payments/keys.py": (
        "def load_signing_key():\n"
        '    """The PEM key that signs refund receipts."""\n'
        '    return """-----BEGIN RSA PRIVATE KEY-----\n'
        f"{SECRETS['pem_body']}\n"
        "u8QzL2mN4bV6cX1zA9sD3fG5hJ7kL0pO\n"
        '-----END RSA PRIVATE KEY-----"""\n'
    ),
    "deploy/config.yaml": (
        "# The ledger database the payments service connects to.\n"
        "database:\n"
        "  host: ledger-db.internal\n"
        "  user: payments\n"
        f"  password: {SECRETS['yaml_password']}\n"
    ),
    "deploy/run.sh": (
        "#!/bin/sh\n"
        "# Starts the payments service against the ledger database.\n"
        "export DB_HOST=ledger-db.internal\n"
        f"export DB_PASSWORD={SECRETS['env_password']}\n"
        "exec gunicorn payments.app:api\n"
    ),
}


def leaked(text: str) -> list[str]:
    """The names of the planted secrets that occur in `text`."""
    return [name for name, secret in SECRETS.items() if secret in text]
