#!/usr/bin/env bash
# Regenerates the legacy SQLite files under tests/fixtures/orm/, each written through a real
# library the way a service built on it writes its ids:
#   sqlalchemy.db  SQLAlchemy 2 with its `Uuid` type (32 hex digits), tables made by an
#                  alembic revision (so the file has `alembic_version`)
#   django.db      Django's ORM with `UUIDField` (32 hex digits), tables made by `migrate`
#                  (so the file has `django_migrations` and Django's own tables)
#   sqlite3.db     Python's `sqlite3`, ids as `str(uuid).upper()`
#   node.db        Node's better-sqlite3 12, ids braced and upper case (`{...}`)
# Each holds 3 sessions of 3 messages and 1 draft, with the ids tests/orm_fixtures.rs expects:
# writer w (1 to 4) and session s (1 to 3) have the UUID 0000000w-abcd-4ef0-8abc-00000000000s.
#
# CI does not run this: it uses the committed files. Needs python3 (venv) and node/npm; the
# libraries are installed into a temporary virtualenv and a temporary npm folder.
# better-sqlite3 is built from source against the system's Node headers (/usr/include/node)
# when no prebuilt binary can be had.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/tests/fixtures/orm"
schema="$here/tests/fixtures/legacy-schema.sql"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

SQLALCHEMY_VERSION=2.0.36
ALEMBIC_VERSION=1.14.0
DJANGO_VERSION=5.1.4
BETTER_SQLITE3_VERSION=12.11.1

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
    "SQLAlchemy==$SQLALCHEMY_VERSION" "alembic==$ALEMBIC_VERSION" "Django==$DJANGO_VERSION"
py="$work/venv/bin/python"

# --- SQLAlchemy 2 + alembic ------------------------------------------------------------
rm -f "$out/sqlalchemy.db"
mkdir -p "$work/alembic/versions"
cat > "$work/alembic/models.py" <<'EOF'
import uuid
from datetime import datetime
from sqlalchemy import ForeignKey, Text, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

class Base(DeclarativeBase):
    pass

class Session(Base):
    __tablename__ = "sessions"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    summary: Mapped[str] = mapped_column(Text, default="")

class Message(Base):
    __tablename__ = "messages"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("sessions.id"))
    role: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]

class Draft(Base):
    __tablename__ = "drafts"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("sessions.id"))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
EOF
cat > "$work/alembic/env.py" <<'EOF'
from alembic import context
from sqlalchemy import create_engine
engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
EOF
cat > "$work/alembic/script.py.mako" <<'EOF'
EOF
cat > "$work/alembic/versions/0001_interview.py" <<'EOF'
"""the interview tables"""
import sqlalchemy as sa
from alembic import op

revision = "0001_interview"
down_revision = None

def upgrade():
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
    )
    for name, body in (("messages", [sa.Column("role", sa.Text(), nullable=False),
                                     sa.Column("text", sa.Text(), nullable=False)]),
                       ("drafts", [sa.Column("content", sa.Text(), nullable=False)])):
        op.create_table(
            name,
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("session_id", sa.Uuid(), sa.ForeignKey("sessions.id"), nullable=False),
            *body,
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sqlite_autoincrement=True,
        )
EOF
(cd "$work/alembic" && "$py" - "$out/sqlalchemy.db" <<'EOF'
import sys, uuid
from datetime import datetime, timedelta
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.orm import Session as OrmSession
from models import Session, Message, Draft

url = "sqlite:///" + sys.argv[1]
cfg = Config()
cfg.set_main_option("script_location", ".")
cfg.set_main_option("sqlalchemy.url", url)
command.upgrade(cfg, "head")
t0 = datetime(2025, 3, 1, 9, 0, 0, 123456)
with OrmSession(create_engine(url)) as db:
    for s in range(1, 4):
        sid = uuid.UUID(f"00000001-abcd-4ef0-8abc-{s:012x}")
        at = t0 + timedelta(hours=s)
        db.add(Session(id=sid, created_at=at, updated_at=at + timedelta(minutes=3),
                       summary=f"sqlalchemy session {s}"))
        for m in range(3):
            db.add(Message(session_id=sid, role="assistant" if m % 2 == 0 else "user",
                           text=f"sqlalchemy {s}.{m}", created_at=at + timedelta(minutes=m)))
        db.add(Draft(session_id=sid, content=f"sqlalchemy draft {s}",
                     created_at=at + timedelta(minutes=3)))
        db.commit()
EOF
)

# --- Django ------------------------------------------------------------------------------
rm -f "$out/django.db"
mkdir -p "$work/django/interview/migrations"
touch "$work/django/interview/__init__.py" "$work/django/interview/migrations/__init__.py"
cat > "$work/django/settings.py" <<EOF
SECRET_KEY = "fixtures"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "interview"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "$out/django.db"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
EOF
cat > "$work/django/interview/models.py" <<'EOF'
from django.db import models

class Session(models.Model):
    id = models.UUIDField(primary_key=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    summary = models.TextField(default="")
    class Meta:
        db_table = "sessions"

class Message(models.Model):
    session = models.ForeignKey(Session, models.CASCADE, db_column="session_id")
    role = models.TextField()
    text = models.TextField()
    created_at = models.DateTimeField()
    class Meta:
        db_table = "messages"

class Draft(models.Model):
    session = models.ForeignKey(Session, models.CASCADE, db_column="session_id")
    content = models.TextField()
    created_at = models.DateTimeField()
    class Meta:
        db_table = "drafts"
EOF
(cd "$work/django" && DJANGO_SETTINGS_MODULE=settings "$py" - <<'EOF'
import uuid
from datetime import datetime, timedelta, timezone
import django
django.setup()
from django.core.management import call_command
call_command("makemigrations", "interview", verbosity=0)
call_command("migrate", verbosity=0)
from interview.models import Session, Message, Draft
t0 = datetime(2025, 3, 2, 9, 0, 0, 654321, tzinfo=timezone.utc)
for s in range(1, 4):
    at = t0 + timedelta(hours=s)
    session = Session.objects.create(id=uuid.UUID(f"00000002-abcd-4ef0-8abc-{s:012x}"),
                                     created_at=at, updated_at=at + timedelta(minutes=3),
                                     summary=f"django session {s}")
    for m in range(3):
        Message.objects.create(session=session, role="assistant" if m % 2 == 0 else "user",
                               text=f"django {s}.{m}", created_at=at + timedelta(minutes=m))
    Draft.objects.create(session=session, content=f"django draft {s}",
                         created_at=at + timedelta(minutes=3))
EOF
)

# --- Python's sqlite3, upper-case ids ------------------------------------------------------
rm -f "$out/sqlite3.db"
"$py" - "$out/sqlite3.db" "$schema" <<'EOF'
import sqlite3, sys, uuid
from datetime import datetime, timedelta, timezone
db = sqlite3.connect(sys.argv[1])
db.executescript(open(sys.argv[2]).read())
t0 = datetime(2025, 3, 3, 9, 0, 0, tzinfo=timezone.utc)
with db:
    for s in range(1, 4):
        sid = str(uuid.UUID(f"00000003-abcd-4ef0-8abc-{s:012x}")).upper()
        at = t0 + timedelta(hours=s)
        db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                   (sid, at.isoformat(), (at + timedelta(minutes=3)).isoformat(), f"sqlite3 session {s}"))
        for m in range(3):
            db.execute("INSERT INTO messages (session_id, role, text, created_at) VALUES (?, ?, ?, ?)",
                       (sid, "assistant" if m % 2 == 0 else "user", f"sqlite3 {s}.{m}",
                        (at + timedelta(minutes=m)).isoformat()))
        db.execute("INSERT INTO drafts (session_id, content, created_at) VALUES (?, ?, ?)",
                   (sid, f"sqlite3 draft {s}", (at + timedelta(minutes=3)).isoformat()))
db.close()
EOF

# --- Node's better-sqlite3, braced upper-case ids ----------------------------------------
rm -f "$out/node.db"
mkdir -p "$work/node"
(cd "$work/node" && npm init -y >/dev/null &&
    npm_config_nodedir="${npm_config_nodedir:-/usr}" npm install --no-audit --no-fund --loglevel=error \
        "better-sqlite3@$BETTER_SQLITE3_VERSION" >/dev/null &&
    node -e 'console.error("better-sqlite3", require("better-sqlite3/package.json").version)')
cat > "$work/node/write.js" <<'EOF'
const Database = require("better-sqlite3");
const fs = require("fs");
const [out, schema] = process.argv.slice(2);
const db = new Database(out);
db.exec(fs.readFileSync(schema, "utf8"));
const session = db.prepare("INSERT INTO sessions VALUES (?, ?, ?, ?)");
const message = db.prepare("INSERT INTO messages (session_id, role, text, created_at) VALUES (?, ?, ?, ?)");
const draft = db.prepare("INSERT INTO drafts (session_id, content, created_at) VALUES (?, ?, ?)");
const t0 = Date.UTC(2025, 2, 4, 9, 0, 0, 250);
const at = (ms) => new Date(ms).toISOString();
db.transaction(() => {
  for (let s = 1; s <= 3; s++) {
    const id = `{00000004-abcd-4ef0-8abc-${s.toString(16).padStart(12, "0")}}`.toUpperCase();
    const t = t0 + s * 3600e3;
    session.run(id, at(t), at(t + 180e3), `node session ${s}`);
    for (let m = 0; m < 3; m++) {
      message.run(id, m % 2 === 0 ? "assistant" : "user", `node ${s}.${m}`, at(t + m * 60e3));
    }
    draft.run(id, `node draft ${s}`, at(t + 180e3));
  }
})();
db.close();
EOF
(cd "$work/node" && node write.js "$out/node.db" "$schema")

# Small, self-contained files: no WAL beside them, free pages dropped.
"$py" - "$out" <<'EOF'
import sqlite3, sys
for name in ("sqlalchemy", "django", "sqlite3", "node"):
    db = sqlite3.connect(f"{sys.argv[1]}/{name}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("VACUUM")
    first = db.execute("SELECT id FROM sessions ORDER BY rowid LIMIT 1").fetchone()[0]
    print(f"{name}.db: first session id stored as {first!r}")
    db.close()
EOF
