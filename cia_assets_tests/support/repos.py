"""Real git repositories for the code under test to clone over file://, and the sample
codebase most tests index."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
}


@dataclass
class GitRepo:
    """A real git repository in a temp dir, cloned by the code under test over file://."""

    path: Path

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=self.path,
            env={**os.environ, **GIT_ENV},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def write(self, files: dict[str, str | bytes | None]) -> None:
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)

    def commit(self, files: dict[str, str | bytes | None], message: str = "change") -> str:
        self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


SAMPLE_FILES: dict[str, str | bytes | None] = {
    "payments/auth.py": (
        '"""Authorization for the payments service."""\n'
        "\n"
        "ROLES = {'admin', 'clerk'}\n"
        "\n"
        "\n"
        "def check_permission(user, action):\n"
        '    """Return True when the user may perform the action on a payment."""\n'
        "    if user.role == 'admin':\n"
        "        return True\n"
        "    return action in user.grants\n"
        "\n"
        "\n"
        "class TokenValidator:\n"
        '    """Validates signed API tokens."""\n'
        "\n"
        "    def __init__(self, secret):\n"
        "        self.secret = secret\n"
        "\n"
        "    def validate(self, token):\n"
        "        return token.signature == sign(token.body, self.secret)\n"
    ),
    "payments/ledger.go": (
        "package payments\n"
        "\n"
        "// Ledger keeps the balance of every account.\n"
        "type Ledger struct {\n"
        "\tbalances map[string]int64\n"
        "}\n"
        "\n"
        "// Transfer moves an amount between two accounts.\n"
        "func (l *Ledger) Transfer(from, to string, amount int64) error {\n"
        "\tl.balances[from] -= amount\n"
        "\tl.balances[to] += amount\n"
        "\treturn nil\n"
        "}\n"
    ),
    "web/refund.ts": (
        "export function computeRefundAmount(total: number, fee: number): number {\n"
        "  return Math.max(0, total - fee);\n"
        "}\n"
    ),
    "README.md": (
        "# Payments\n\nProcesses card payments.\n\n## Refunds\n\nRefunds are computed in web/refund.ts.\n"
    ),
}
