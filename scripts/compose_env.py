"""Write ``.env`` for docker-compose.yaml from ``.env.example`` with freshly generated secrets.

    python -m scripts.compose_env [--output .env] [--force]

Every ``<generate>`` placeholder becomes a random URL-safe token, ``<generate-fernet>`` a
Fernet key; other values are kept. An existing file is never overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDERS = {
    "<generate>": lambda: secrets.token_urlsafe(32),
    "<generate-fernet>": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
}


def render(template: str) -> str:
    """The template with each placeholder value replaced by a new secret."""
    lines = []
    for line in template.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#") and value.strip() in PLACEHOLDERS:
            line = f"{key}={PLACEHOLDERS[value.strip()]()}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", type=Path, default=ROOT / ".env.example")
    parser.add_argument("--output", type=Path, default=ROOT / ".env")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        print(f"{args.output} exists; keeping it (use --force to replace its secrets)", file=sys.stderr)
        return 1
    args.output.write_text(render(args.template.read_text()))
    args.output.chmod(0o600)
    print(f"wrote {args.output} with new secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
