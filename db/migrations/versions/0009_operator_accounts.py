"""Operators manage accounts and keys: an account can be disabled, a key has a label and records when it
was last used.

- `accounts.disabled_at`: set while the account is disabled (its keys stop working, its streams close).
- `api_keys.name`: the label an operator gave the key ("ci", "laptop"); `api_keys.last_used_at`: when a
  request last authenticated with it (updated at most every few seconds per key).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE accounts ADD COLUMN disabled_at timestamptz;
        ALTER TABLE api_keys ADD COLUMN name text, ADD COLUMN last_used_at timestamptz;
        CREATE INDEX api_keys_account_idx ON api_keys (account_id, created_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX api_keys_account_idx;
        ALTER TABLE api_keys DROP COLUMN name, DROP COLUMN last_used_at;
        ALTER TABLE accounts DROP COLUMN disabled_at;
        """
    )
